//! `sluice.dev/router: gateway-api` (operator/src/kube/gateway.rs) against
//! the fake API server serving the Gateway API CRDs the tests generate
//! ([`sluice_tests::gateway_crds`]), installed with the real `kubectl`. The
//! operator runs as its own ServiceAccount with the shipped RBAC; the
//! HTTPRoute is written by a GitOps stand-in with `kubectl apply
//! --server-side --field-manager=gitops` and read back with `kubectl get
//! httproute -o json`. The gate is scripted (pass or fail per analysis):
//! what is under test is where the weights go.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::{Value, json};
use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
use sluice_operator::kube::{self as op, Context, KubeStatus};
use sluice_operator::provider::Provider;
use sluice_tests::fake_kube::{FakeKube, Options};
use sluice_tests::{TempDir, gateway_crds};

const NS: &str = "shop";
const APPS: &str = "apis/apps/v1";

/// The route as Git has it: `/static` goes to a CDN Service, everything
/// else to Service `app` (the rule Sluice manages).
fn git_route(hostname: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "public"}],
            "hostnames": [hostname],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
                 "backendRefs": [{"name": "cdn", "port": 80}]},
                {"backendRefs": [{"name": "app", "port": 80}]},
            ],
        },
    })
}

struct World {
    fake: FakeKube,
    ctx: Arc<Context>,
    clock: Arc<AtomicU64>,
    script: Arc<std::sync::Mutex<VecDeque<Outcome>>>,
    dir: TempDir,
}

impl World {
    async fn new(route: Value) -> Self {
        let fake = FakeKube::start_with(Options {
            tls: true,
            ..Options::default()
        })
        .await;
        fake.create_namespace("shop");
        fake.install_operator_rbac();
        let dir = TempDir::new("kube-gateway");
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let script = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let mut ctx = Context::new(
            fake.operator_client(),
            "test-operator",
            None,
            "sluice-proxy:test".into(),
        );
        let c = clock.clone();
        ctx.now = Arc::new(move || c.load(Ordering::SeqCst) as f64);
        let s = script.clone();
        ctx.make_provider = Arc::new(move |_, _, _| {
            let s = s.clone();
            Provider::Scripted(Box::new(move || {
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
        ctx.poll = std::time::Duration::from_millis(10);
        // No proxy runs with this router: nothing to ask for its config.
        ctx.proxy_digests = None;
        let w = Self {
            fake,
            ctx: Arc::new(ctx),
            clock,
            script,
            dir,
        };
        let crds = w.file("gateway-crds.yaml", &gateway_crds::yaml());
        w.ok(&["apply", "-f", &crds]);
        w.gitops_apply(&route, false)
            .expect("gitops creates the route");
        w.fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}}),
        );
        w.fake.put(
            APPS,
            "deployments",
            NS,
            json!({
                "metadata": {"name": "app", "annotations": {
                    "sluice.dev/canary": "enabled", "sluice.dev/steps": "20,50",
                    "sluice.dev/interval": "10s", "sluice.dev/failure-limit": "2",
                    "sluice.dev/baseline": "0s",
                    "sluice.dev/router": "gateway-api", "sluice.dev/httproute": "web",
                }},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "app"}},
                    "template": {
                        "metadata": {"labels": {"app": "app"}},
                        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 9898}]}]},
                    },
                },
            }),
        );
        w.fake.make_ready(NS, "app");
        w
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// `kubectl ARGS...` as the cluster's admin: (success, stdout, stderr).
    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let kubeconfig = self.dir.path.join("kubeconfig");
        if !kubeconfig.exists() {
            self.fake.kubeconfig(&kubeconfig);
        }
        sluice_tests::kubectl_in(&kubeconfig, &self.dir.path, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    /// The GitOps tool's server-side apply of `route`; Err: kubectl's error.
    fn gitops_apply(&self, route: &Value, force: bool) -> Result<String, String> {
        let path = self.file("route.yaml", &serde_yaml_ng::to_string(route).unwrap());
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager=gitops",
            "-f",
            path.as_str(),
        ];
        if force {
            args.push("--force-conflicts");
        }
        let (ok, out, err) = self.kubectl(&args);
        if ok { Ok(out) } else { Err(err) }
    }

    /// The route as `kubectl get httproute web -o json` prints it.
    fn route(&self) -> Value {
        serde_json::from_str(&self.ok(&["-n", NS, "get", "httproute", "web", "-o", "json"]))
            .expect("kubectl prints JSON")
    }

    /// The managed rule's backendRefs as (name, weight).
    fn split(&self) -> Vec<(String, i64)> {
        self.route()["spec"]["rules"][1]["backendRefs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["weight"].as_i64().unwrap_or(1),
                )
            })
            .collect()
    }

    /// The canary's weight on the route, in basis points.
    fn canary_bp(&self) -> i64 {
        let split = self.split();
        assert_eq!(split.len(), 2, "{split:?}");
        assert_eq!(split[0].0, "app-primary");
        assert_eq!(split[1].0, "app-canary");
        assert_eq!(split[0].1 + split[1].1, 10_000, "{split:?}");
        split[1].1
    }

    async fn tick(&self) {
        let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
        let d = api.get("app").await.unwrap();
        op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
    }

    fn deployment(&self, name: &str) -> Option<Value> {
        self.fake.get(APPS, "deployments", NS, name)
    }

    fn status(&self) -> KubeStatus {
        KubeStatus::from_primary(
            &serde_json::from_value(self.deployment("app-primary").expect("app-primary")).unwrap(),
        )
        .expect("a status on app-primary")
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

    fn set_image(&self, image: &str) {
        self.fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 9898}]}]}}}}),
        );
    }

    async fn bootstrapped(self) -> Self {
        self.tick().await;
        self.tick().await;
        self.fake.make_ready(NS, "app-primary");
        for _ in 0..5 {
            if self.status().phase == "Initialized" {
                return self;
            }
            self.tick().await;
        }
        panic!("never Initialized: {:?}", self.status());
    }

    async fn step(&self) {
        for d in ["app", "app-primary"] {
            self.fake.make_ready(NS, d);
        }
        self.clock.fetch_add(10, Ordering::SeqCst);
        self.tick().await;
    }

    /// Steps until the phase is `phase`: the canary weights the route
    /// carried after each step, without repeats.
    async fn until(&self, phase: &str, limit: usize) -> Vec<i64> {
        let mut seen = Vec::new();
        for _ in 0..limit {
            if self.status().phase == phase {
                return seen;
            }
            self.step().await;
            let bp = self.canary_bp();
            if seen.last() != Some(&bp) {
                seen.push(bp);
            }
        }
        panic!("never reached {phase}; status: {:?}", self.status());
    }

    fn primary_image(&self) -> String {
        self.deployment("app-primary").unwrap()["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A release through the route moves its weights step by step (20 %, then
/// 50 %), promotes (the primary gets the new template, then all weight to
/// it), and a failing canary is rolled back (all weight to the primary);
/// Service `app` is never touched and no proxy is made; removing the
/// annotation gives the route its own backendRefs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_moves_the_httproutes_weights_promotes_and_rolls_back() {
    let w = World::new(git_route("shop.example.com"))
        .await
        .bootstrapped()
        .await;
    let service_before = w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"].clone();
    assert_eq!(w.canary_bp(), 0, "taken over: everything to app-primary");
    let route = w.route();
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"][0]["name"], "cdn",
        "a rule that does not name the app is left alone"
    );
    assert_eq!(route["spec"]["rules"][1]["backendRefs"][0]["port"], 80);
    assert!(
        w.deployment("app-sluice").is_none(),
        "no proxy with this router"
    );
    assert_eq!(
        w.deployment("app").unwrap()["spec"]["replicas"],
        0,
        "the user's Deployment is the idle canary"
    );
    for svc in ["app-primary", "app-canary"] {
        assert!(w.fake.get("api/v1", "services", NS, svc).is_some(), "{svc}");
    }

    w.set_image("app:2");
    let seen = w.until("Succeeded", 30).await;
    assert_eq!(seen, vec![0, 2000, 5000, 0], "weights seen on the route");
    assert_eq!(w.primary_image(), "app:2");
    assert_eq!(w.canary_bp(), 0);

    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.set_image("app:3");
    let seen = w.until("Failed", 30).await;
    assert_eq!(seen.last(), Some(&0), "rolled back: {seen:?}");
    assert!(seen.contains(&2000), "{seen:?}");
    assert_eq!(
        w.primary_image(),
        "app:2",
        "the failed revision not promoted"
    );
    assert_eq!(w.deployment("app").unwrap()["spec"]["replicas"], 0);
    assert!(
        w.reasons().iter().any(|(r, _)| r == "RolledBack"),
        "{:?}",
        w.reasons()
    );
    assert_eq!(
        w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"],
        service_before,
        "Service app never changed"
    );

    // Sluice lets go: the route's rule points at Service app again.
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    for _ in 0..8 {
        w.fake.make_ready(NS, "app");
        w.tick().await;
    }
    assert!(w.deployment("app-primary").is_none(), "cleaned up");
    assert_eq!(
        w.split(),
        vec![("app".to_string(), 1)],
        "the recorded backendRefs back"
    );
    let route = w.route();
    assert!(
        route["metadata"]["annotations"]["sluice.dev/original-backendrefs"].is_null(),
        "{route}"
    );
    assert_eq!(w.deployment("app").unwrap()["spec"]["replicas"], 3);
    // The note says what was handed back: the route, never Service app,
    // which this router did not touch.
    let released: Vec<String> = w
        .reasons()
        .into_iter()
        .filter(|(r, _)| r == "Released")
        .map(|(_, note)| note)
        .collect();
    assert_eq!(released.len(), 1, "{:?}", w.reasons());
    assert!(
        released[0].contains("its traffic goes to app's own pods again")
            && !released[0].contains("Service"),
        "{released:?}"
    );
    // All of it through the shipped RBAC, which grants exactly what the
    // router uses on routes.
    let operator = "system:serviceaccount:sluice-system:sluice-operator";
    let verbs: std::collections::BTreeSet<String> = w
        .fake
        .requests()
        .into_iter()
        .filter(|(user, a)| user == operator && a.group == gateway_crds::GROUP)
        .map(|(_, a)| format!("{} {}", a.resource, a.verb))
        .collect();
    assert_eq!(
        verbs.into_iter().collect::<Vec<_>>(),
        ["httproutes get", "httproutes patch"]
    );
}

/// A GitOps re-apply (server-side, its own field manager) that changes the
/// hostnames keeps the decided weight; one that fights over the rules is
/// refused by the API server as a conflict with `sluice`, and when forced
/// it is undone at the next reconcile with a `RouteDrift` Warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitops_reapply_keeps_the_decided_weights_and_a_forced_fight_is_undone() {
    let w = World::new(git_route("shop.example.com"))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    for _ in 0..10 {
        if w.canary_bp() == 2000 {
            break;
        }
        w.step().await;
    }
    assert_eq!(w.canary_bp(), 2000);

    // As Argo CD with ignoreDifferences on .spec.rules[].backendRefs and
    // RespectIgnoreDifferences: Git's manifest with the live backendRefs.
    // (Its rules are the live ones, defaults included: rules is an atomic
    // list, so any difference in it is a conflict.)
    let mut manifest = git_route("www.example.com");
    manifest["spec"]["rules"] = w.route()["spec"]["rules"].clone();
    w.gitops_apply(&manifest, false)
        .expect("no conflict: the same backendRefs");
    w.tick().await;
    let route = w.route();
    assert_eq!(route["spec"]["hostnames"], json!(["www.example.com"]));
    assert_eq!(w.canary_bp(), 2000, "the decided weight kept");

    // Git's backendRefs as they are in Git: Sluice owns the rules.
    let conflict = w
        .gitops_apply(&git_route("www.example.com"), false)
        .expect_err("a conflict over the rules");
    assert!(
        conflict.contains("conflict") && conflict.contains("sluice"),
        "{conflict}"
    );
    assert_eq!(w.canary_bp(), 2000);

    // Forced: the weights are gone until the next reconcile.
    w.gitops_apply(&git_route("www.example.com"), true)
        .expect("a forced apply");
    assert_eq!(w.split(), vec![("app".to_string(), 1)]);
    w.tick().await;
    assert_eq!(w.canary_bp(), 2000, "Sluice applied its weights again");
    assert!(
        w.reasons()
            .iter()
            .any(|(r, note)| r == "RouteDrift" && note.contains("canary 20%")),
        "{:?}",
        w.reasons()
    );
    assert_eq!(w.route()["spec"]["hostnames"], json!(["www.example.com"]));

    // Deleted and made anew from Git (`kubectl replace --force`, a GitOps
    // tool's delete and create): no record of Sluice's is left on it, and
    // its rule sends everything to the app's Service (the canary's pods).
    // Sluice applies its weights again all the same.
    let path = w.file(
        "route.yaml",
        &serde_yaml_ng::to_string(&git_route("www.example.com")).unwrap(),
    );
    w.ok(&["replace", "--force", "-f", &path]);
    assert_eq!(w.split(), vec![("app".to_string(), 1)]);
    w.tick().await;
    assert_eq!(
        w.canary_bp(),
        2000,
        "Sluice applied its weights to the new route"
    );
}

/// A route deleted mid-release is a Warning Event where users look, and
/// the release holds; once the route is back it gets the weight in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_deleted_mid_release_is_a_warning_and_the_release_holds_until_it_is_back() {
    let w = World::new(git_route("shop.example.com"))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    for _ in 0..10 {
        if w.canary_bp() == 2000 {
            break;
        }
        w.step().await;
    }
    assert_eq!(w.canary_bp(), 2000);
    w.ok(&["-n", NS, "delete", "httproute", "web"]);
    w.tick().await;
    assert!(
        w.reasons().iter().any(|(r, note)| r == "RouteNotFound"
            && note.contains("HTTPRoute")
            && note.contains("not found")),
        "{:?}",
        w.reasons()
    );
    let path = w.file(
        "route.yaml",
        &serde_yaml_ng::to_string(&git_route("shop.example.com")).unwrap(),
    );
    w.ok(&["apply", "-f", &path]);
    w.tick().await;
    assert_eq!(
        w.canary_bp(),
        2000,
        "the weight in force, on the route made anew"
    );
}

/// The operator watches the HTTPRoutes it releases through: with the
/// controller running as `sluice kube` runs it (at rest, where nothing is
/// due for a minute), a forced GitOps apply that drops Sluice's backendRefs
/// is undone within seconds, with a `RouteDrift` Warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_apply_is_undone_at_once_by_the_running_controller() {
    let w = World::new(git_route("shop.example.com"))
        .await
        .bootstrapped()
        .await;
    assert_eq!(w.canary_bp(), 0, "at rest");
    let controller = tokio::spawn(op::run(w.ctx.clone(), Some(NS.into())));
    // The controller's first pass over the Deployment, then quiet.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let drifts = |w: &World| {
        w.reasons()
            .iter()
            .filter(|(r, _)| r == "RouteDrift")
            .count()
    };
    let before = drifts(&w);
    w.gitops_apply(&git_route("shop.example.com"), true)
        .expect("a forced apply");
    sluice_tests::eventually(
        "the controller to apply its backendRefs again",
        std::time::Duration::from_secs(10),
        || {
            let split = w.split();
            async move { (split.len() == 2 && split[0].0 == "app-primary").then_some(()) }
        },
    )
    .await;
    assert_eq!(w.canary_bp(), 0);
    assert!(
        drifts(&w) > before,
        "a RouteDrift Warning: {:?}",
        w.reasons()
    );
    // The watch, through the shipped RBAC (the fake answers 403 outside it).
    let operator = "system:serviceaccount:sluice-system:sluice-operator";
    let verbs: std::collections::BTreeSet<String> = w
        .fake
        .requests()
        .into_iter()
        .filter(|(user, a)| user == operator && a.group == gateway_crds::GROUP)
        .map(|(_, a)| format!("{} {}", a.resource, a.verb))
        .collect();
    assert_eq!(
        verbs.into_iter().collect::<Vec<_>>(),
        [
            "httproutes get",
            "httproutes list",
            "httproutes patch",
            "httproutes watch"
        ]
    );
    controller.abort();
    let _ = controller.await;
}

/// A route Sluice cannot release through is refused with a Warning Event
/// naming it and the rule, before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_a_rule_of_its_own_for_the_app_is_refused_before_anything_is_made() {
    let mut mixed = git_route("shop.example.com");
    mixed["spec"]["rules"][1]["backendRefs"] =
        json!([{"name": "app", "port": 80}, {"name": "legacy", "port": 80}]);
    let w = World::new(mixed).await;
    w.tick().await;
    w.tick().await;
    assert!(w.deployment("app-primary").is_none());
    let reasons = w.reasons();
    assert!(
        reasons.iter().any(|(r, note)| r == "RouteUnsupported"
            && note.contains("HTTPRoute shop/web rule 1 sends to legacy as well")
            && note.contains("nothing was created")),
        "{reasons:?}"
    );
    assert_eq!(w.deployment("app").unwrap()["spec"]["replicas"], 3);

    // The route named does not exist.
    let w = World::new(git_route("shop.example.com")).await;
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/httproute": "missing"}}}),
    );
    w.tick().await;
    assert!(
        w.reasons()
            .iter()
            .any(|(r, note)| r == "RouteUnsupported" && note.contains("HTTPRoute shop/missing")),
        "{:?}",
        w.reasons()
    );
    assert!(w.deployment("app-primary").is_none());
}
