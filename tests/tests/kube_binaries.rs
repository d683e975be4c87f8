//! The Kubernetes entry points as processes, with a kubeconfig pointing at the
//! fake API server: `sluice kube` (operator) and `sluice-proxy --kube-configmap`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::*;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_kube_bootstraps_an_annotated_deployment_and_serves_metrics() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    fake.install_operator_rbac();
    let dir = TempDir::new("kube-bin");
    let kubeconfig = dir.path.join("config");
    let token = fake.service_account_token("sluice-system", "sluice-operator");
    fake.kubeconfig_with(&kubeconfig, Some(&token));
    fake.put("api/v1", "services", "shop", json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}}));
    fake.put(
        "apis/apps/v1",
        "deployments",
        "shop",
        json!({"metadata": {"name": "app", "annotations": {"sluice.dev/canary": "enabled"}},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                        "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}),
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let _operator = Killed(
        Command::new(bin("sluice"))
            .args([
                "kube",
                "--namespace",
                "shop",
                "--metrics-listen",
                &metrics,
                "--leader-namespace",
                "sluice-system",
                "--identity",
                "op-1",
                "--proxy-image",
                "sluice-proxy:test",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(
        "the operator to create app-primary",
        Duration::from_secs(20),
        || async {
            fake.get("apis/apps/v1", "deployments", "shop", "app-primary")
                .map(|_| ())
        },
    )
    .await;
    let proxy = fake
        .get("apis/apps/v1", "deployments", "shop", "app-sluice")
        .unwrap();
    assert_eq!(
        proxy["spec"]["template"]["spec"]["containers"][0]["image"],
        "sluice-proxy:test"
    );
    let lease = fake
        .get(
            "apis/coordination.k8s.io/v1",
            "leases",
            "sluice-system",
            "sluice-operator",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "op-1");
    wait_until_ok(
        "operator metrics",
        &format!("http://{metrics}/healthz"),
        Duration::from_secs(5),
    )
    .await;
    // Bootstrap finishes once the cluster reports the new Deployments ready
    // and every proxy replica says (on its admin port, at its pod IP) that
    // it serves the ConfigMap's text. The proxy pods here are one admin
    // endpoint on 127.0.0.1 that answers what the test tells it.
    let served = std::sync::Arc::new(std::sync::Mutex::new("0123456789abcdef".to_string()));
    let answer = served.clone();
    serve_http_on("127.0.0.1:9901".parse().unwrap(), move |_req| {
        let text = format!(
            "sluice_config_source{{sha256=\"{}\"}} 1\n",
            answer.lock().unwrap()
        );
        async move { hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text))) }
    })
    .await;
    fake.make_ready("shop", "app-primary");
    fake.make_ready("shop", "app-sluice");
    for pod in fake.names("api/v1", "pods", "shop") {
        if pod.starts_with("app-sluice-") {
            fake.merge_into(
                "api/v1",
                "pods",
                "shop",
                &pod,
                json!({"status": {"podIP": "127.0.0.1"}}),
            );
        }
    }
    eventually(
        "the Service to select the proxy",
        Duration::from_secs(20),
        || async {
            let svc = fake.get("api/v1", "services", "shop", "app")?;
            (svc["spec"]["selector"]["app.kubernetes.io/name"] == "sluice-proxy").then_some(())
        },
    )
    .await;
    // While the proxies report another config, the user's pods stay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replicas = |name: &str| {
        fake.get("apis/apps/v1", "deployments", "shop", name)
            .unwrap()["spec"]["replicas"]
            .clone()
    };
    assert_eq!(
        replicas("app"),
        1,
        "scaled down before the proxies had the config"
    );
    let text = fake
        .get("api/v1", "configmaps", "shop", "app-sluice")
        .unwrap()["data"]["routes.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    *served.lock().unwrap() = sha256_prefix(&text);
    // The status (and its metric) is saved right after the Service switch.
    eventually(
        "the phase metric to show Initialized",
        Duration::from_secs(5),
        || async {
            let text = get(&format!("http://{metrics}/metrics")).await.ok()?.2;
            String::from_utf8_lossy(&text)
                .contains("sluice_canary_phase{namespace=\"shop\",name=\"app\"} 1")
                .then_some(())
        },
    )
    .await;
    assert_eq!(replicas("app"), 0);
    // A release: the status is kept on app-primary, which the operator
    // watches, so a save it did not need would set off another reconcile
    // and another save, without end (about a hundred in 5 s). Only a tick
    // (every 5 s here) or a change saves.
    fake.merge_into(
        "apis/apps/v1",
        "deployments",
        "shop",
        "app",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}}),
    );
    eventually("the release to start", Duration::from_secs(20), || async {
        let primary = fake.get("apis/apps/v1", "deployments", "shop", "app-primary")?;
        let status = primary["metadata"]["annotations"]["sluice.dev/status"].as_str()?;
        status.contains("Initializing").then_some(())
    })
    .await;
    for d in ["app", "app-primary"] {
        fake.make_ready("shop", d);
    }
    let saves = || {
        fake.writes()
            .iter()
            .filter(|(method, path)| {
                method == "PATCH" && path.ends_with("/deployments/app-primary")
            })
            .count()
    };
    let before = saves();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = saves() - before;
    assert!(
        during <= 6,
        "{during} status saves in 5 s of a release: the operator reconciles its own writes"
    );
}

/// The first 16 hex digits of the SHA-256 of `text`, by `sha256sum`.
fn sha256_prefix(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..16].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_proxy_serves_from_a_configmap_and_follows_it() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    // The proxy runs as its own ServiceAccount, with the Role the operator
    // makes for it: read its one ConfigMap, nothing else.
    let owner = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "app", "uid": "u1"});
    for (plural, object) in sluice_operator::kube::objects::proxy_rbac("app", &owner) {
        let prefix = if plural == "serviceaccounts" {
            "api/v1"
        } else {
            "apis/rbac.authorization.k8s.io/v1"
        };
        let mut object = object;
        object["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("ownerReferences");
        fake.put(prefix, &plural, "shop", object);
    }
    let dir = TempDir::new("proxy-cm");
    let kubeconfig = dir.path.join("config");
    let token = fake.service_account_token("shop", "app-sluice");
    fake.kubeconfig_with(&kubeconfig, Some(&token));
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let (listen, admin) = (free_port(), free_port());
    let config = |weight: u32| {
        format!(
            "listen: 127.0.0.1:{listen}\nadmin:\n  listen: 127.0.0.1:{admin}\nroutes:\n  - {{ name: app, stable: '{}', canary: '{}', canary_weight: {weight} }}\n",
            stable.url(),
            canary.url()
        )
    };
    fake.put(
        "api/v1",
        "configmaps",
        "shop",
        json!({"metadata": {"name": "app-sluice"}, "data": {"routes.yaml": config(0)}}),
    );
    let _proxy = Killed(
        Command::new(bin("sluice-proxy"))
            .args(["--kube-configmap", "shop/app-sluice", "--workers", "2"])
            .env("KUBECONFIG", &kubeconfig)
            .spawn()
            .unwrap(),
    );
    wait_until_ok(
        "the proxy to be ready",
        &format!("http://127.0.0.1:{admin}/readyz"),
        Duration::from_secs(10),
    )
    .await;
    let (_, h, _) = get(&format!("http://127.0.0.1:{listen}/")).await.unwrap();
    assert_eq!(h["x-backend"], "stable");
    // It reports which text it serves, for the operator to wait on.
    let serves = |text: String| {
        let want = format!(
            "sluice_config_source{{sha256=\"{}\"}} 1",
            sha256_prefix(&text)
        );
        async move {
            let body = get(&format!("http://127.0.0.1:{admin}/metrics"))
                .await
                .ok()?
                .2;
            String::from_utf8_lossy(&body).contains(&want).then_some(())
        }
    };
    eventually("the first text's digest", Duration::from_secs(5), || {
        serves(config(0))
    })
    .await;
    fake.merge_into(
        "api/v1",
        "configmaps",
        "shop",
        "app-sluice",
        json!({"data": {"routes.yaml": config(100)}}),
    );
    eventually(
        "the ConfigMap change to apply",
        Duration::from_secs(10),
        || async {
            let (_, h, _) = get(&format!("http://127.0.0.1:{listen}/")).await.ok()?;
            (h["x-backend"] == "canary").then_some(())
        },
    )
    .await;
    eventually("the new text's digest", Duration::from_secs(5), || {
        serves(config(100))
    })
    .await;
    // An operator one version ahead writes a field this proxy does not know:
    // the rest of its change (the weight back to 0) still applies.
    let newer = format!(
        "listen: 127.0.0.1:{listen}\nadmin:\n  listen: 127.0.0.1:{admin}\nroutes:\n  - {{ name: app, stable: '{}', canary: '{}', canary_weight: 0, outlier_detection: {{ consecutive_5xx: 5 }} }}\n",
        stable.url(),
        canary.url()
    );
    fake.merge_into(
        "api/v1",
        "configmaps",
        "shop",
        "app-sluice",
        json!({"data": {"routes.yaml": newer}}),
    );
    eventually(
        "the newer operator's config to apply",
        Duration::from_secs(10),
        || async {
            let (_, h, _) = get(&format!("http://127.0.0.1:{listen}/")).await.ok()?;
            (h["x-backend"] == "stable").then_some(())
        },
    )
    .await;
    eventually("the newer text's digest", Duration::from_secs(5), || {
        serves(newer.clone())
    })
    .await;
    let version: serde_json::Value = serde_json::from_slice(
        &get(&format!("http://127.0.0.1:{admin}/version"))
            .await
            .unwrap()
            .2,
    )
    .unwrap();
    assert_eq!(version["config_sha256"], sha256_prefix(&newer));
    // A bad reference is a usage error that names the flag.
    let out = Command::new(bin("sluice-proxy"))
        .args(["--kube-configmap", "no-slash"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--kube-configmap: `no-slash` is not NAMESPACE/NAME")
    );
}

/// `sluice kube --access-secret NS/NAME` reads its outbound credentials
/// from a Secret through the API server, with the operator's own RBAC (a
/// ServiceAccount token and the shipped ClusterRole): a good Secret lets
/// it run, and no secret value shows in its output, the Events or the
/// status it writes; a Secret without a key the list names, or no Secret,
/// is refused at start naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_kube_reads_its_access_secret_under_its_rbac_and_never_shows_it() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token_value = "prom-bearer-9c8b7a";
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    fake.install_operator_rbac();
    let dir = TempDir::new("kube-access");
    let kubeconfig = dir.path.join("config");
    let token = fake.service_account_token("sluice-system", "sluice-operator");
    fake.kubeconfig_with(&kubeconfig, Some(&token));
    let access = "- url: https://prometheus.example:9443/\n  bearer_token_file: token\n";
    fake.put(
        "api/v1",
        "secrets",
        "sluice-system",
        json!({"metadata": {"name": "sluice-access"},
               "data": {"access.yaml": b64(access), "token": b64(token_value)}}),
    );
    fake.put(
        "api/v1",
        "secrets",
        "sluice-system",
        json!({"metadata": {"name": "half"}, "data": {"access.yaml": b64(access)}}),
    );
    fake.put("api/v1", "services", "shop", json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}}));
    fake.put(
        "apis/apps/v1",
        "deployments",
        "shop",
        json!({"metadata": {"name": "app", "annotations": {"sluice.dev/canary": "enabled"}},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                        "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}),
    );
    let run = |secret: &str, metrics: &str| {
        let mut command = Command::new(bin("sluice"));
        command
            .args([
                "kube",
                "--namespace",
                "shop",
                "--metrics-listen",
                metrics,
                "--leader-namespace",
                "sluice-system",
                "--identity",
                "op-1",
                "--proxy-image",
                "sluice-proxy:test",
                "--access-secret",
                secret,
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    for (secret, expected) in [
        (
            "sluice-system/half",
            "--access-secret sluice-system/half key access.yaml: entry 0: bearer_token_file: names no key of the Secret",
        ),
        (
            "sluice-system/nope",
            "--access-secret sluice-system/nope: no such Secret",
        ),
    ] {
        let metrics = format!("127.0.0.1:{}", free_port());
        let out = tokio::task::spawn_blocking({
            let mut command = run(secret, &metrics);
            move || command.output().unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{secret}: {stderr}");
        assert!(stderr.contains(expected), "{secret}: {stderr}");
    }

    let metrics = format!("127.0.0.1:{}", free_port());
    let child = run("sluice-system/sluice-access", &metrics)
        .spawn()
        .unwrap();
    let mut operator = Killed(child);
    eventually(
        "the operator to create app-primary",
        Duration::from_secs(20),
        || async {
            fake.get("apis/apps/v1", "deployments", "shop", "app-primary")
                .map(|_| ())
        },
    )
    .await;
    assert!(
        fake.requests()
            .iter()
            .any(|(user, a)| user.contains("sluice-operator")
                && format!("{a:?}").contains("sluice-access")),
        "the Secret was read as the operator"
    );
    let _ = operator.0.kill();
    let out = operator.0.wait_with_output_now();
    let mut everything = out;
    for (prefix, plural) in [
        ("api/v1", "events"),
        ("apis/events.k8s.io/v1", "events"),
        ("api/v1", "configmaps"),
    ] {
        for object in fake.view(|v| {
            v.list(prefix, plural, "shop")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        }) {
            everything.push_str(&object.to_string());
        }
    }
    for name in fake.names("apis/apps/v1", "deployments", "shop") {
        everything.push_str(
            &fake
                .get("apis/apps/v1", "deployments", "shop", &name)
                .unwrap()
                .to_string(),
        );
    }
    assert!(
        !everything.contains(token_value),
        "the token shows in the operator's output, an Event, a ConfigMap or a status"
    );
}

trait OutputNow {
    fn wait_with_output_now(&mut self) -> String;
}

impl OutputNow for Child {
    /// What the killed child wrote to stdout and stderr.
    fn wait_with_output_now(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut text = String::new();
        if let Some(out) = self.stdout.as_mut() {
            let _ = out.read_to_string(&mut text);
        }
        if let Some(err) = self.stderr.as_mut() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}
