//! `kubectl sluice` (the `kubectl-sluice` binary) against the fake API
//! server through a kubeconfig, every subcommand and its error paths.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::*;

const APPS: &str = "apis/apps/v1";

struct Plugin {
    fake: FakeKube,
    kubeconfig: std::path::PathBuf,
    _dir: TempDir,
}

fn status(phase: &str, weight: f64, step: usize, failed_revision: Option<&str>) -> String {
    status_at(phase, weight, step, failed_revision, 1)
}

/// A status the operator wrote having seen `generation` of the Deployment.
fn status_at(
    phase: &str,
    weight: f64,
    step: usize,
    failed_revision: Option<&str>,
    generation: i64,
) -> String {
    json!({
        "observedGeneration": generation,
        "phase": phase, "canaryWeight": weight, "failedChecks": 1, "revision": "abc123", "primaryRevision": "0ld",
        "failedRevision": failed_revision, "lastTransition": "2026-11-26T10:00:00Z", "message": format!("{phase} for the test"),
        "originalReplicas": 2, "bootstrapped": true, "steps": [20.0, 50.0], "step": step,
        "strategy": "canary", "traffic": "baseline arm, affinity cookie app",
        "lastChecks": [
            {"name": "success-rate", "outcome": "pass", "value": 99.7, "threshold": ">= 99%", "reason": ""},
            {"name": "p99", "outcome": "fail", "value": 0.61, "threshold": "<= 0.5s", "reason": "610ms is above the limit"},
        ],
    })
    .to_string()
}

/// A valid Deployment spec (the API server refuses writes to invalid ones).
fn spec(name: &str, replicas: i64) -> Value {
    json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}},
    })
}

impl Plugin {
    async fn new() -> Self {
        let fake = FakeKube::start().await;
        fake.create_namespace("shop");
        let dir = TempDir::new("kubectl");
        let kubeconfig = dir.path.join("config");
        fake.kubeconfig(&kubeconfig);
        let annotated = json!({"sluice.dev/canary": "enabled"});
        for name in ["app", "web"] {
            fake.put(APPS, "deployments", "default", json!({"metadata": {"name": name, "annotations": annotated}, "spec": spec(name, 0)}));
        }
        fake.put(
            APPS,
            "deployments",
            "default",
            json!({"metadata": {"name": "plain"}, "spec": spec("plain", 1)}),
        );
        let this = Self {
            fake,
            kubeconfig,
            _dir: dir,
        };
        this.set_status("WaitingPromotion", 50.0, 2, None);
        this
    }

    fn set_status(&self, phase: &str, weight: f64, step: usize, failed: Option<&str>) {
        self.fake.put(
            APPS,
            "deployments",
            "default",
            json!({"metadata": {"name": "app-primary", "annotations": {"sluice.dev/status": status(phase, weight, step, failed)}}, "spec": spec("app-primary", 2)}),
        );
    }

    fn command_annotation(&self) -> Value {
        self.fake
            .get(APPS, "deployments", "default", "app-primary")
            .unwrap()["metadata"]["annotations"]["sluice.dev/command"]
            .clone()
    }

    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let kubeconfig = self.kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(bin("kubectl-sluice"))
                .args(&args)
                .env("KUBECONFIG", kubeconfig)
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_lists_canaried_deployments_and_shows_one_in_detail() {
    let p = Plugin::new().await;
    let (code, out, err) = p.run(&["get"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("PHASE") && lines[0].contains("WEIGHT"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("app ")
            && lines[1].contains("WaitingPromotion")
            && lines[1].contains("[#####.....]"),
        "{out}"
    );
    assert!(
        lines[1].contains("20,[50]") && lines[1].contains("p99 FAIL"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("web ") && lines[2].contains("Pending"),
        "{out}"
    );
    // The TRAFFIC column: what `describe` prints beside the strategy, in
    // a column as wide as its widest cell, so the next one lines up.
    let column = |line: &str, text: &str| {
        line.find(text)
            .unwrap_or_else(|| panic!("{text:?} in {line:?}:\n{out}"))
    };
    let traffic = column(lines[0], "TRAFFIC");
    assert_eq!(
        column(lines[1], "baseline arm, affinity cookie app"),
        traffic,
        "{out}"
    );
    assert_eq!(&lines[2][traffic..=traffic], "-", "{out}");
    let checks = column(lines[0], "LAST CHECKS");
    assert_eq!(column(lines[1], "success-rate"), checks, "{out}");
    assert_eq!(
        checks,
        traffic + "baseline arm, affinity cookie app".len() + 3,
        "{out}"
    );
    assert!(!out.contains("plain"), "not canaried: {out}");
    let (code, out, _) = p.run(&["get", "app"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("phase     WaitingPromotion"), "{out}");
    assert!(out.contains("steps     20,[50]"), "{out}");
    assert!(
        out.contains("p99")
            && out.contains("(want <= 0.5s)")
            && out.contains("610ms is above the limit"),
        "{out}"
    );
    let (code, _, err) = p.run(&["get", "nope"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("no canaried Deployment `nope` in namespace default; canaried here: app, web"),
        "{err}"
    );
    let (code, _, err) = p.run(&["-n", "other", "get", "app"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("canaried here: none"), "{err}");
}

/// `get --watch` follows an API watch: each change to a release redraws
/// the table with it, and the plugin lists once and then watches instead of
/// polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_redraws_on_each_change_from_an_api_watch() {
    use std::io::Read;
    let p = Plugin::new().await;
    let mut child = Command::new(bin("kubectl-sluice"))
        .args(["get", "--watch"])
        .env("KUBECONFIG", &p.kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, frames) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            // Frames start with the clear-screen sequence.
            while let Some(end) = text[1..].find("\x1b[2J").map(|i| i + 1) {
                let frame: String = text.drain(..end).collect();
                let _ = tx.send(frame);
            }
            if text.ends_with('\n') && text.contains("NAME") {
                let _ = tx.send(std::mem::take(&mut text));
            }
        }
    });
    let frame = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match frames.recv_timeout(left) {
                Ok(f) if f.contains(what) => return f,
                Ok(_) => continue,
                Err(_) => panic!("no frame with {what} within 10 s"),
            }
        }
    };
    frame("WaitingPromotion");
    for (phase, weight) in [("Promoting", 50.0), ("Succeeded", 0.0)] {
        p.set_status(phase, weight, 2, None);
        let f = frame(phase);
        assert!(f.contains("NAME"), "{f}");
    }
    child.kill().unwrap();
    let _ = child.wait();
    let requests = p.fake.requests();
    let lists = requests
        .iter()
        .filter(|(_, a)| a.verb == "list" && a.resource == "deployments")
        .count();
    let watches = requests
        .iter()
        .filter(|(_, a)| a.verb == "watch" && a.resource == "deployments")
        .count();
    assert!(watches >= 1, "the plugin never watched");
    // One list per frame (three frames), plus the watch's own initial list.
    assert!(
        lists <= 5,
        "{lists} lists: the plugin polls instead of watching"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_abort_set_the_command_the_operator_consumes() {
    let p = Plugin::new().await;
    let (code, out, err) = p.run(&["promote", "app"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("promotion approved"));
    assert_eq!(p.command_annotation(), "approve");
    let (code, _, _) = p.run(&["promote", "app", "--full"]).await;
    assert_eq!(code, 0);
    assert_eq!(p.command_annotation(), "promote-full");
    let (code, out, _) = p.run(&["abort", "app"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("rollback requested"));
    assert_eq!(p.command_annotation(), "abort");
    // An abort not yet taken up is never replaced by a later command.
    let (code, _, err) = p.run(&["promote", "app"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already has the command `abort` waiting")
            && err.contains("sluice.dev/command-"),
        "{err}"
    );
    assert_eq!(p.command_annotation(), "abort");
    let (code, _, err) = p.run(&["abort", "app"]).await;
    assert_eq!((code, p.command_annotation()), (0, json!("abort")), "{err}");
    // Error paths: nothing to promote or abort.
    let (code, _, err) = p.run(&["promote", "web"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("promote applies to a release in Progressing or WaitingPromotion"),
        "{err}"
    );
    p.set_status("Succeeded", 0.0, 2, None);
    let (code, _, err) = p.run(&["abort", "app"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no release in progress"), "{err}");
    let (code, _, err) = p.run(&["promote", "ghost"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("canaried here: app, web"), "{err}");
}

/// A release held in `Initialized` by its confirm-rollout webhooks (its
/// state machine under way) can be aborted; `Initialized` between
/// releases (taken over, nothing released) has nothing to abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_ends_a_release_waiting_for_its_confirm_rollout() {
    use sluice_operator::machine::{self, Observation, Phase};
    let p = Plugin::new().await;
    let plan = sluice_operator::plan::Plan::default();
    let obs = Observation {
        revision: "abc123".into(),
        target_ready: true,
        ..Observation::default()
    };
    let mut t = machine::step(&plan, None, &obs);
    machine::confirm(&mut t.status);
    // Past its baseline, waiting for the confirm-rollout webhooks.
    t.status.phase = Phase::Initialized;
    let mut waiting: Value = serde_json::from_str(&status("Initialized", 0.0, 0, None)).unwrap();
    waiting["machine"] = serde_json::to_value(&t.status).unwrap();
    p.fake.put(
        APPS,
        "deployments",
        "default",
        json!({"metadata": {"name": "app-primary", "annotations": {"sluice.dev/status": waiting.to_string()}}, "spec": spec("app-primary", 2)}),
    );
    let (code, out, err) = p.run(&["abort", "app"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rollback requested"), "{out}");
    assert_eq!(p.command_annotation(), "abort");
    p.set_status("Initialized", 0.0, 0, None);
    let (code, _, err) = p.run(&["abort", "app"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no release in progress"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_needs_a_rolled_back_revision() {
    let p = Plugin::new().await;
    let (code, _, err) = p.run(&["retry", "app"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no rolled-back revision to retry"), "{err}");
    p.set_status("Failed", 0.0, 1, Some("bad123"));
    let (code, out, err) = p.run(&["retry", "app"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bad123 will be released again"));
    assert_eq!(p.command_annotation(), "retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exit_codes_follow_the_phase_and_timeout_waits() {
    let p = Plugin::new().await;
    assert_eq!(
        p.run(&["status", "app", "--timeout", "500ms"]).await.0,
        3,
        "in progress"
    );
    p.set_status("Failed", 0.0, 1, Some("x"));
    assert_eq!(p.run(&["status", "app"]).await.0, 1);
    p.set_status("Succeeded", 0.0, 2, None);
    let (code, out, _) = p.run(&["status", "app"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("app: Succeeded"));
    // --timeout waits for the end of a release.
    p.set_status("Progressing", 20.0, 1, None);
    let fake = p.fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        fake.merge_into(
            APPS,
            "deployments",
            "default",
            "app-primary",
            json!({"metadata": {"annotations": {"sluice.dev/status": status("Succeeded", 0.0, 2, None)}}}),
        );
    });
    let (code, _, _) = p.run(&["status", "app", "--timeout", "10s"]).await;
    assert_eq!(code, 0);
    // A new generation (kubectl apply of a new image): the status still
    // says Succeeded, from the previous release, and is not trusted until
    // the operator has seen the new generation.
    p.fake.merge_into(
        APPS,
        "deployments",
        "default",
        "app",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}}),
    );
    let generation =
        p.fake.get(APPS, "deployments", "default", "app").unwrap()["metadata"]["generation"]
            .as_i64()
            .unwrap();
    assert_eq!(generation, 2);
    let (code, out, _) = p.run(&["status", "app", "--timeout", "1s"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not yet seen generation 2"), "{out}");
    // Without --timeout it waits as long as it takes.
    let fake = p.fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fake.merge_into(
            APPS,
            "deployments",
            "default",
            "app-primary",
            json!({"metadata": {"annotations": {"sluice.dev/status": status_at("Succeeded", 0.0, 2, None, 2)}}}),
        );
    });
    let (code, out, _) = p.run(&["status", "app"]).await;
    assert_eq!(code, 0, "{out}");
    // An app the operator refused has no status: its last Warning Event
    // says why, rather than only "not yet seen".
    let (code, out, _) = p.run(&["status", "web", "--timeout", "300ms"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.ends_with("not yet seen by the operator\n"), "{out}");
    for (name, at, note) in [
        ("web.1", "2026-12-07T10:00:00.000000Z", "an older warning"),
        (
            "web.2",
            "2026-12-07T10:00:05.000000Z",
            "sluice.dev/port: `x` is not a port of Service default/web",
        ),
    ] {
        // Stored in its core/v1 form, as the API server keeps Events.
        p.fake.put(
            "api/v1",
            "events",
            "default",
            json!({"metadata": {"name": name}, "eventTime": at, "type": "Warning",
                   "reason": "InvalidAnnotation", "message": note, "action": "Reconcile",
                   "reportingComponent": "sluice.dev/operator", "reportingInstance": "sluice",
                   "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "default"}}),
        );
    }
    let (code, out, err) = p.run(&["status", "web", "--timeout", "300ms"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(
            "its last Warning Event: InvalidAnnotation: sluice.dev/port: `x` is not a port"
        ),
        "{out} {err}"
    );
    let (code, _, err) = p.run(&["status", "nope"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("nope"));
    let (code, _, err) = p.run(&["status", "app", "--timeout", "soon"]).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_exit_4() {
    let dir = TempDir::new("kubectl-dead");
    let config = dir.path.join("config");
    std::fs::write(
        &config,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\ncurrent-context: x\nusers:\n- name: x\n  user: {{}}\n", free_port()),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("kubectl-sluice"))
            .arg("get")
            .env("KUBECONFIG", &config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Kubernetes API"));
}

/// `get -A` lists every namespace's releases with a NAMESPACE column;
/// `-o json` and `-o yaml` print what the table shows as data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_namespaces_and_json_and_yaml_output() {
    let p = Plugin::new().await;
    let annotated = json!({"sluice.dev/canary": "enabled"});
    p.fake.put(
        APPS,
        "deployments",
        "other",
        json!({"metadata": {"name": "app", "annotations": annotated}, "spec": spec("app", 0)}),
    );
    p.fake.put(
        APPS,
        "deployments",
        "other",
        json!({"metadata": {"name": "app-primary", "annotations": {"sluice.dev/status": status("Progressing", 20.0, 1, None)}}, "spec": spec("app-primary", 2)}),
    );
    let (code, out, err) = p.run(&["get", "-A"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..2], ["NAMESPACE", "NAME"], "{out}");
    let named: Vec<(&str, &str, &str)> = rows[1..].iter().map(|r| (r[0], r[1], r[3])).collect();
    assert_eq!(
        named,
        [
            ("default", "app", "WaitingPromotion"),
            ("default", "web", "Pending"),
            ("other", "app", "Progressing"),
        ],
        "{out}"
    );

    let (code, out, err) = p.run(&["get", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(list[0]["name"], "app");
    assert_eq!(list[0]["namespace"], "default");
    assert_eq!(list[0]["status"]["phase"], "WaitingPromotion");
    assert_eq!(list[0]["status"]["canaryWeight"], 50.0);
    assert!(list[1]["status"].is_null(), "{out}");

    let (code, out, err) = p.run(&["-n", "other", "get", "app", "-o", "yaml"]).await;
    assert_eq!(code, 0, "{err}");
    let one: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(one["namespace"], "other");
    assert_eq!(one["status"]["phase"], "Progressing");
    assert_eq!(one["status"]["step"], 1);

    let (code, _, err) = p.run(&["get", "-o", "table"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("possible values: json, yaml"), "{err}");
}

/// `--kubeconfig` and `--context` pick the cluster as kubectl does: the
/// file's current context points at a dead server here, so only
/// `--context fake` reaches the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_and_context_flags_pick_the_cluster() {
    let p = Plugin::new().await;
    let text = std::fs::read_to_string(&p.kubeconfig).unwrap();
    let dead = free_port();
    let two = text
        .replace("current-context: fake", "current-context: dead")
        .replace(
            "contexts:\n",
            "contexts:\n- name: dead\n  context:\n    cluster: dead\n    user: fake\n",
        )
        .replace(
            "clusters:\n",
            &format!("clusters:\n- name: dead\n  cluster:\n    server: http://127.0.0.1:{dead}\n"),
        );
    let path = p._dir.path.join("two-contexts");
    std::fs::write(&path, two).unwrap();
    let path = path.display().to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = Command::new(bin("kubectl-sluice"))
                .args(&args)
                .env_remove("KUBECONFIG")
                .env("HOME", "/nonexistent")
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, out, err) = run(vec![
        "get".into(),
        "--kubeconfig".into(),
        path.clone(),
        "--context".into(),
        "fake".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("app ")),
        "{out}"
    );
    let (code, _, err) = run(vec!["get".into(), "--kubeconfig".into(), path.clone()])
        .await
        .unwrap();
    assert_eq!(code, 4, "the current context's server is dead: {err}");
    let (code, _, err) = run(vec![
        "get".into(),
        "--kubeconfig".into(),
        path,
        "--context".into(),
        "nope".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 4);
    assert!(err.contains("nope"), "{err}");
}

/// `completion bash|zsh|fish` prints a script that knows the subcommands
/// and the values of `-o`; another shell is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_scripts_for_bash_zsh_and_fish() {
    let p = Plugin::new().await;
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = p.run(&["completion", shell]).await;
        assert_eq!(code, 0, "{shell}: {err}");
        for word in ["promote", "abort", "status", "all-namespaces", "yaml"] {
            assert!(out.contains(word), "{shell}: no `{word}` in the script");
        }
    }
    let (code, _, err) = p.run(&["completion", "powershell-7"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("possible values: bash, zsh, fish"), "{err}");
}

/// `lint` prints every problem of a Deployment's annotations at once (from
/// a file of several documents, or from the cluster) and exits 2; valid
/// annotations exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_prints_every_problem_at_once() {
    let p = Plugin::new().await;
    let bad = json!({"sluice.dev/canary": "enabled", "sluice.dev/steps": "10,5", "sluice.dev/interval": "2s", "sluice.dev/gate": "magic", "sluice.dev/stepz": "1"});
    let file = p._dir.path.join("app.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\n  annotations: {bad}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: fine\n  annotations: {{sluice.dev/canary: enabled}}\n"
        ),
    )
    .unwrap();
    let (code, out, err) = p.run(&["lint", "-f", &file.display().to_string()]).await;
    assert_eq!(code, 2, "{err}");
    for needle in [
        "Deployment shop: annotation sluice.dev/steps: `10,5` is invalid",
        "Deployment shop: annotation sluice.dev/interval: `2s` is invalid",
        "Deployment shop: annotation sluice.dev/gate: `magic` is invalid",
        "Deployment shop: annotation sluice.dev/stepz: `1` is invalid: unknown annotation",
    ] {
        assert!(out.contains(needle), "no `{needle}` in {out}");
    }
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(!out.contains("fine"), "{out}");

    p.fake.put(
        APPS,
        "deployments",
        "default",
        json!({"metadata": {"name": "broken", "annotations": bad}, "spec": spec("broken", 1)}),
    );
    let (code, out, _) = p.run(&["lint", "broken"]).await;
    assert_eq!(code, 2);
    assert_eq!(out.lines().count(), 4, "{out}");
    let (code, out, err) = p.run(&["lint", "app"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no problem"), "{out}");
    let (code, _, err) = p.run(&["lint", "nope"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no Deployment `nope`"), "{err}");
}
