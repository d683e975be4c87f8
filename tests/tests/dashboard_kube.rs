//! The release record on Kubernetes, from the operator's reconcile (what
//! `sluice kube` runs, through its own RBAC) on the fake API server: the
//! ConfigMap `<app>-sluice-releases` is written as the release runs,
//! `kubectl sluice report` renders it (opened in headless Chromium with
//! the network off), `sluice.dev/keep-releases` bounds it, and
//! `kubectl sluice dashboard` acts with the user's own credentials: a user
//! whose RBAC forbids the patch sees Kubernetes' refusal.

use std::collections::VecDeque;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::{Value, json};
use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
use sluice_operator::kube::{self as op, Context, ReplicaConfig};
use sluice_operator::provider::Provider;
use sluice_proxy::kube_source::digest;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::fake_kube::rbac::User;
use sluice_tests::*;

mod dashboard_browser;
use dashboard_browser::{Browser, num, open_offline, points};

const NS: &str = "shop";
const APPS: &str = "apis/apps/v1";

struct World {
    fake: FakeKube,
    ctx: Arc<Context>,
    clock: Arc<AtomicU64>,
    script: Arc<std::sync::Mutex<VecDeque<Outcome>>>,
    dir: TempDir,
}

fn verdict(outcome: Outcome) -> Analysis {
    Analysis {
        canary_requests: Some(100),
        checks: vec![CheckResult {
            name: "success-rate".into(),
            outcome,
            value: Some(if outcome == Outcome::Fail { 90.0 } else { 99.5 }),
            threshold: ">= 99%".into(),
            reason: if outcome == Outcome::Fail {
                "90% is below >= 99%".into()
            } else {
                String::new()
            },
            ..CheckResult::default()
        }],
        ..Analysis::default()
    }
}

impl World {
    async fn new(annotations: Value) -> Self {
        let fake = FakeKube::start().await;
        fake.create_namespace("shop");
        fake.install_operator_rbac();
        fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}}),
        );
        let mut ann = json!({"sluice.dev/canary": "enabled", "sluice.dev/steps": "20,50", "sluice.dev/interval": "10s", "sluice.dev/failure-limit": "1", "sluice.dev/gate": "threshold", "sluice.dev/success-rate": "99"});
        sluice_tests::fake_kube::merge(&mut ann, &annotations);
        fake.put(
            APPS,
            "deployments",
            NS,
            json!({
                "metadata": {"name": "app", "annotations": ann},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "app"}},
                    "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}},
                },
            }),
        );
        fake.make_ready(NS, "app");
        let clock = Arc::new(AtomicU64::new(1_800_000_000));
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
                verdict(s.lock().unwrap().pop_front().unwrap_or(Outcome::Pass))
            }))
        });
        ctx.poll = Duration::from_millis(10);
        let f = fake.clone();
        ctx.proxy_digests = Some(Arc::new(move |ns: String, app: String| {
            let digest = f
                .get("api/v1", "configmaps", &ns, &format!("{app}-sluice"))
                .and_then(|cm| cm["data"]["routes.yaml"].as_str().map(digest))
                .ok_or_else(|| "no ConfigMap".to_string());
            let replicas: Vec<ReplicaConfig> = ["a", "b"]
                .iter()
                .map(|p| ReplicaConfig {
                    pod: format!("{app}-sluice-{p}"),
                    digest: digest.clone(),
                })
                .collect();
            Box::pin(async move { Ok(replicas) })
        }));
        let w = Self {
            fake,
            ctx: Arc::new(ctx),
            clock,
            script,
            dir: TempDir::new("dashboard-kube"),
        };
        w.tick().await;
        w.tick().await;
        w.fake.make_ready(NS, "app-primary");
        w.fake.make_ready(NS, "app-sluice");
        for _ in 0..5 {
            if w.phase() == "Initialized" {
                return w;
            }
            w.tick().await;
        }
        panic!("never Initialized: {}", w.phase());
    }

    async fn tick(&self) {
        let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
        let d = api.get("app").await.unwrap();
        op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
    }

    fn phase(&self) -> String {
        let p = self
            .fake
            .get(APPS, "deployments", NS, "app-primary")
            .unwrap();
        let s: Value = serde_json::from_str(
            p["metadata"]["annotations"]["sluice.dev/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        s["phase"].as_str().unwrap().to_string()
    }

    async fn until(&self, phase: &str) {
        for _ in 0..30 {
            if self.phase() == phase {
                return;
            }
            for d in ["app", "app-primary"] {
                self.fake.make_ready(NS, d);
            }
            self.clock.fetch_add(10, Ordering::SeqCst);
            self.tick().await;
        }
        let p = self
            .fake
            .get(APPS, "deployments", NS, "app-primary")
            .unwrap();
        panic!(
            "never reached {phase}: {}",
            p["metadata"]["annotations"]["sluice.dev/status"]
        );
    }

    fn set_image(&self, image: &str) {
        self.fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}),
        );
    }

    fn records_configmap(&self) -> Value {
        self.fake
            .get("api/v1", "configmaps", NS, "app-sluice-releases")
            .expect("the records ConfigMap")
    }

    /// The records in the ConfigMap, oldest first.
    fn records(&self) -> Vec<Value> {
        let cm = self.records_configmap();
        let mut keys: Vec<(&String, &Value)> = cm["data"].as_object().unwrap().iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        keys.iter()
            .map(|(_, v)| serde_json::from_str(v.as_str().unwrap()).unwrap())
            .collect()
    }

    fn kubeconfig(&self, token: Option<&str>) -> std::path::PathBuf {
        let path = self
            .dir
            .path
            .join(format!("config-{}", token.unwrap_or("admin")));
        self.fake.kubeconfig_with(&path, token);
        path
    }

    fn kubectl_sluice(&self, kubeconfig: &std::path::Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("kubectl-sluice"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_release_record_configmap_is_written_and_kubectl_sluice_report_renders_it() {
    let w = World::new(json!({"sluice.dev/keep-releases": "2"})).await;
    let owner_uid = w.fake.get(APPS, "deployments", NS, "app").unwrap()["metadata"]["uid"].clone();
    w.set_image("app:2");
    w.until("Succeeded").await;
    let cm = w.records_configmap();
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sluice"
    );
    assert_eq!(cm["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], owner_uid);
    let records = w.records();
    assert_eq!(records.len(), 1);
    let promoted = &records[0];
    assert_eq!(promoted["version"], 1);
    assert_eq!(promoted["namespace"], NS);
    assert_eq!(promoted["outcome"], "promoted");
    let weights: Vec<f64> = promoted["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["weight"].as_f64().unwrap())
        .collect();
    assert!(
        weights.contains(&20.0) && weights.contains(&50.0),
        "{weights:?}"
    );
    assert!(!promoted["scrapes"].as_array().unwrap().is_empty());

    // A second release fails; a third one: only the newest 2 are kept.
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail]);
    w.set_image("app:bad");
    w.until("Failed").await;
    // Whatever the failed release did not read is not this one's.
    w.script.lock().unwrap().clear();
    w.set_image("app:3");
    w.until("Succeeded").await;
    let records = w.records();
    assert_eq!(records.len(), 2, "sluice.dev/keep-releases: 2");
    assert_eq!(records[0]["outcome"], "rolled back");
    assert_eq!(records[1]["outcome"], "promoted");
    let failed_revision = records[0]["revision"].as_str().unwrap().to_string();

    // kubectl sluice report, as the user, for the failed revision.
    let admin = w.kubeconfig(None);
    let (code, html, err) = w.kubectl_sluice(
        &admin,
        &["-n", NS, "report", "app", "--revision", &failed_revision],
    );
    assert_eq!(code, 0, "{err}");
    let file = w.dir.path.join("app.html");
    std::fs::write(&file, &html).unwrap();
    let mut b = open_offline(&file).await;
    let text = b.text().await;
    assert!(text.contains("rolled back"), "{text}");
    let n = records[0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .position(|d| d["kind"] == "rollback")
        .unwrap();
    let li = b
        .eval(&format!(
            "document.querySelector('li[data-decision=\"{}\"]').textContent",
            n + 1
        ))
        .await;
    let li = li.as_str().unwrap();
    assert!(
        li.contains("check success-rate decided, its value 90.00 outside >= 99%"),
        "{li}"
    );
    let drawn = points(&mut b, "failure-rate", "canary").await;
    let scrapes = records[0]["scrapes"].as_array().unwrap();
    assert_eq!(drawn.len(), scrapes.len());
    for (d, s) in drawn.iter().zip(scrapes) {
        assert_eq!(
            num(&d["requests"]) as u64,
            s["canary"]["requests"].as_u64().unwrap()
        );
        assert_eq!(
            num(&d["failures"]) as u64,
            s["canary"]["failures"].as_u64().unwrap()
        );
    }
    // Bad input: an unknown revision, an unknown app.
    let (code, _, err) =
        w.kubectl_sluice(&admin, &["-n", NS, "report", "app", "--revision", "nope"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no recorded release of revision `nope`"),
        "{err}"
    );
    let (code, _, err) = w.kubectl_sluice(&admin, &["-n", NS, "report", "ghost"]);
    assert_eq!(code, 2);
    assert!(err.contains("no canaried Deployment `ghost`"), "{err}");

    // A new revision pushed mid-release supersedes the running one: its
    // record ends, naming the new revision, and its report says so.
    w.set_image("app:4");
    w.until("Progressing").await;
    let superseded = w.records().last().unwrap()["revision"]
        .as_str()
        .unwrap()
        .to_string();
    w.set_image("app:5");
    for _ in 0..10 {
        if w.records().last().unwrap()["revision"] != superseded.as_str() {
            break;
        }
        w.fake.make_ready(NS, "app");
        w.clock.fetch_add(10, Ordering::SeqCst);
        w.tick().await;
    }
    let records = w.records();
    assert_eq!(records.len(), 2, "sluice.dev/keep-releases: 2");
    let newest = records[1]["revision"].as_str().unwrap();
    assert_ne!(newest, superseded);
    assert_eq!(records[0]["revision"], superseded.as_str());
    assert_eq!(
        records[0]["outcome"],
        format!("superseded by the release of revision {newest}"),
        "{}",
        records[0]
    );
    assert!(records[1].get("outcome").is_none(), "the new one runs");
    let (code, html, err) = w.kubectl_sluice(
        &admin,
        &["-n", NS, "report", "app", "--revision", &superseded],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        html.contains(&format!("superseded by the release of revision {newest}")),
        "the report says so"
    );
    assert!(!html.contains(">running<"), "not running");

    // A records ConfigMap someone else wrote (no owner reference to the
    // Deployment) is not believed: refused, naming it.
    let mut forged = w.records_configmap();
    forged["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    forged["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    w.fake.put("api/v1", "configmaps", NS, forged);
    let (code, _, err) = w.kubectl_sluice(&admin, &["-n", NS, "report", "app"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "ConfigMap {NS}/app-sluice-releases is not Sluice's"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promote_forbidden_by_rbac_shows_kubernetes_refusal_in_the_dashboard() {
    let w = World::new(json!({})).await;
    w.set_image("app:2");
    w.until("Progressing").await;
    // A user who may read releases but not steer them.
    w.fake.put(
        "apis/rbac.authorization.k8s.io/v1",
        "roles",
        NS,
        json!({"metadata": {"name": "release-viewer"}, "rules": [
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
        ]}),
    );
    w.fake.put(
        "apis/rbac.authorization.k8s.io/v1",
        "rolebindings",
        NS,
        json!({"metadata": {"name": "release-viewer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "release-viewer"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "viewer"}]}),
    );
    let token = w.fake.token_for(User {
        name: "viewer".into(),
        groups: vec!["system:authenticated".into()],
    });
    let kubeconfig = w.kubeconfig(Some(&token));
    // A record dated in the future, of the live revision, added to the
    // ConfigMap (by hand or by a hostile writer): it wins nothing.
    let mut forged = w.records().last().unwrap().clone();
    forged["started_at"] = json!(9_999_999_999.0);
    forged["updated_at"] = json!(9_999_999_999.0);
    w.fake.merge_into(
        "api/v1",
        "configmaps",
        NS,
        "app-sluice-releases",
        json!({"data": {"release-9999999999.0.json": forged.to_string()}}),
    );
    let port = free_port();
    let mut child = KillOnDrop(
        Command::new(bin("kubectl-sluice"))
            .args(["-n", NS, "dashboard", "--port", &port.to_string()])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    // Its first line is the login URL (the only way to a session).
    let stdout = child.0.stdout.take().unwrap();
    let first = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .unwrap();
            line
        }),
    )
    .await
    .expect("kubectl sluice dashboard prints its URL within 20 s")
    .unwrap();
    let at = first
        .find(&format!("{base}/?login="))
        .unwrap_or_else(|| panic!("the printed line names the login URL: {first}"));
    let login_url = first[at..].split_whitespace().next().unwrap().to_string();
    // Without it: 401, saying to open the printed URL.
    let (status, _, body) = get(&format!("{base}/")).await.unwrap();
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("opened the URL its command printed"));
    // A second dashboard on the same port: exit 2, naming it.
    let (code, _, err) = w.kubectl_sluice(
        &kubeconfig,
        &["-n", NS, "dashboard", "--port", &port.to_string()],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    let mut b = Browser::start(&[]).await;
    b.open(&login_url).await;
    let rows = b
        .eval(
            "Array.from(document.querySelectorAll('tr[data-release]')).map(r => r.dataset.release)",
        )
        .await;
    let rows: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].contains("9999999999.0"), "{rows:?}");
    let path = rows[1].clone();
    assert!(path.starts_with("/releases/shop/app/"), "{path}");
    let text = b.text().await;
    assert!(text.contains("Progressing"), "{text}");
    // The future-dated record is not the live release: no buttons.
    b.open(&format!("{base}{}", rows[0])).await;
    assert_eq!(
        b.eval("document.querySelectorAll('[data-action]').length")
            .await,
        0
    );

    // The open page of the live release reads only its own app (no list
    // of the namespace's Deployments per poll), and a poll that brings
    // nothing new leaves the page as it is.
    b.open(&format!("{base}{path}")).await;
    assert_eq!(
        b.eval("document.querySelectorAll('[data-action]').length")
            .await,
        2,
        "promote and abort: {}",
        b.text().await
    );
    b.eval("document.querySelector('#live dl.facts').dataset.mark = 'kept'")
        .await;
    let by_viewer = |verb: &str, resource: &str| {
        w.fake
            .requests()
            .iter()
            .filter(|(user, a)| user == "viewer" && a.verb == verb && a.resource == resource)
            .count()
    };
    let (lists, reads) = (
        by_viewer("list", "deployments"),
        by_viewer("get", "configmaps"),
    );
    for _ in 0..100 {
        if by_viewer("get", "configmaps") >= reads + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        by_viewer("get", "configmaps") >= reads + 3,
        "the page polls"
    );
    assert_eq!(
        by_viewer("list", "deployments"),
        lists,
        "a poll lists no Deployments"
    );
    assert_eq!(
        b.eval("(document.querySelector('#live dl.facts') || {dataset: {}}).dataset.mark")
            .await,
        "kept",
        "an unchanged body is not swapped in again"
    );
    // Promote, confirm: the user's own credentials are refused.
    b.open(&format!("{base}{path}")).await;
    b.eval("document.querySelector('[data-action=promote]').click()")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.text().await.contains("Promote now"),
        "the confirmation page"
    );
    b.eval("document.querySelector('[data-confirm=promote]').click()")
        .await;
    let shown = b
        .text_once_it_says("refused", Duration::from_secs(10))
        .await;
    assert!(shown.contains("Kubernetes refused"), "{shown}");
    assert!(
        shown.contains("forbidden") && shown.contains("viewer"),
        "{shown}"
    );
    // Nothing was steered.
    let primary = w.fake.get(APPS, "deployments", NS, "app-primary").unwrap();
    assert!(
        primary["metadata"]["annotations"]
            .get("sluice.dev/command")
            .is_none()
    );
    // A confirmation shown while the release ran is refused (409) once it
    // has ended: the live status is read again just before the patch.
    b.open(&format!("{base}{path}/confirm?action=abort")).await;
    assert!(b.text().await.contains("Abort: roll back now"));
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail]);
    w.until("Failed").await;
    b.eval("document.querySelector('[data-confirm=abort]').click()")
        .await;
    let shown = b
        .text_once_it_says("Nothing was done", Duration::from_secs(10))
        .await;
    assert!(
        shown.contains("Nothing was done: the release has already ended (rolled back)"),
        "{shown}"
    );
    // An unknown release is a 404 page.
    b.open(&format!("{base}/releases/shop/app/release-0000000000.0"))
        .await;
    assert!(b.text().await.contains("There is no release"));
}

/// The dashboard child, stopped when the test ends, also by a failed
/// assertion (it would hold the test's output open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
