//! Every manifest Sluice ships or generates is valid Kubernetes 1.35
//! (`kubernetes-validate --strict` over `kubectl kustomize` output), and
//! every pod template meets Pod Security `restricted`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sluice_operator::kube::objects;
use sluice_tests::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kustomize(dir: &str) -> String {
    let out = Command::new(kubectl())
        .args(["kustomize", &root().join(dir).display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validate(name: &str, yaml: &str) {
    kubernetes_validate(name, yaml);
}

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Pod Security `restricted`: the fields every pod template must set.
fn restricted_problems(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let pod = match kind {
        "Deployment" | "Job" | "StatefulSet" | "DaemonSet" => &object["spec"]["template"]["spec"],
        "Pod" => &object["spec"],
        _ => return Vec::new(),
    };
    let name = format!(
        "{kind}/{}",
        object["metadata"]["name"].as_str().unwrap_or("?")
    );
    let mut problems = Vec::new();
    let pod_non_root = pod["securityContext"]["runAsNonRoot"] == true;
    let pod_seccomp = pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault";
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod[*k].as_array())
        .flatten()
        .collect();
    assert!(!containers.is_empty(), "{name} has no containers");
    for c in containers {
        let sc = &c["securityContext"];
        let cname = format!("{name} container {}", c["name"].as_str().unwrap_or("?"));
        if !(pod_non_root || sc["runAsNonRoot"] == true) {
            problems.push(format!("{cname}: runAsNonRoot is not true"));
        }
        if !(pod_seccomp || sc["seccompProfile"]["type"] == "RuntimeDefault") {
            problems.push(format!("{cname}: seccompProfile is not RuntimeDefault"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            problems.push(format!("{cname}: allowPrivilegeEscalation is not false"));
        }
        if !sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"))
        {
            problems.push(format!("{cname}: capabilities do not drop ALL"));
        }
        if sc["privileged"] == true {
            problems.push(format!("{cname}: privileged"));
        }
    }
    problems
}

/// What the operator generates for an app, as one YAML stream.
fn generated() -> String {
    let user = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app", "uid": "5f1c6a3e-0000-4000-8000-000000000001"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "app"}}, "template": {
            "metadata": {"labels": {"app": "app"}},
            "spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "app", "image": "app:1", "envFrom": [{"configMapRef": {"name": "settings"}}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}},
    });
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
        "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}});
    let owner = objects::owner_reference(&user);
    let selector = objects::selector_of(&user);
    // A low port too: the proxy then needs the unprivileged-port sysctl.
    let mut two_ports = service.clone();
    two_ports["spec"]["ports"] = json!([{"name": "http", "port": 80, "targetPort": 9898}, {"name": "grpc", "port": 81, "targetPort": 80, "appProtocol": "grpc"}]);
    let ports = objects::proxied_ports(&two_ports, &user, 80, None).expect("ports resolve");
    let mut docs = vec![
        objects::primary_deployment(&user, 2, &owner, "0123456789abcdef"),
        objects::service_copy(
            &service,
            "app-primary",
            &objects::primary_labels(&selector),
            &owner,
            "app",
        ),
        objects::service_copy(&service, "app-canary", &selector, &owner, "app"),
        objects::proxy_configmap("app", "shop", &ports, 1000, &owner),
        objects::proxy_deployment(
            "app",
            "shop",
            "sluice-proxy:0.1.0",
            &owner,
            &ports,
            &selector,
        ),
        objects::proxy_pdb("app", &owner),
        objects::proxy_admin_service("app", &owner),
        objects::admin_secret("app", "t0ken", &owner),
        objects::config_copy(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"k": "v"}}),
            &owner,
            "app",
        ),
        objects::hpa_twin(
            &json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "app"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"}, "minReplicas": 2, "maxReplicas": 4}}),
            "app",
            &owner,
        ),
    ];
    docs.extend(
        objects::proxy_rbac("app", &owner)
            .into_iter()
            .map(|(_, o)| o),
    );
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn shipped_kustomizations_validate_strictly_for_kubernetes_1_35() {
    for dir in [
        "deploy/operator",
        "deploy/operator-namespaced",
        "deploy/examples/podinfo",
        "deploy/examples/blue-green",
        "deploy/examples/experiment",
        "deploy/argocd",
        "deploy/prometheus",
    ] {
        let yaml = kustomize(dir);
        assert!(!documents(&yaml).is_empty(), "{dir} renders nothing");
        validate(&dir.replace('/', "-"), &yaml);
    }
}

#[test]
fn every_example_deployments_annotations_are_accepted_by_the_operator() {
    let mut seen = Vec::new();
    for dir in [
        "deploy/examples/podinfo",
        "deploy/examples/blue-green",
        "deploy/examples/experiment",
    ] {
        for doc in documents(&kustomize(dir)) {
            if doc["kind"] != "Deployment" {
                continue;
            }
            let annotations: std::collections::BTreeMap<String, String> =
                serde_json::from_value(doc["metadata"]["annotations"].clone()).unwrap();
            let settings = sluice_operator::kube::annotations::parse(&annotations, false)
                .unwrap_or_else(|e| panic!("{dir}: {e}"));
            seen.push(settings.plan.strategy.name());
        }
    }
    assert_eq!(seen, ["canary", "blue-green", "experiment"]);
}

#[test]
fn generated_objects_validate_strictly_for_kubernetes_1_35() {
    validate("generated", &generated());
}

#[test]
fn every_pod_template_meets_pod_security_restricted() {
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut streams: Vec<(String, String)> = ["deploy/operator", "deploy/examples/podinfo"]
        .iter()
        .map(|d| (d.to_string(), kustomize(d)))
        .collect();
    streams.push(("generated".into(), generated()));
    for (source, yaml) in streams {
        for doc in documents(&yaml) {
            if matches!(doc["kind"].as_str(), Some("Deployment" | "Job")) {
                checked += 1;
                problems.extend(
                    restricted_problems(&doc)
                        .into_iter()
                        .map(|p| format!("{source}: {p}")),
                );
            }
        }
    }
    // The operator, the example app, its load Job, and the proxy and primary the operator makes.
    assert!(checked >= 5, "only {checked} pod templates found");
    assert!(
        problems.is_empty(),
        "Pod Security restricted violations:\n{}",
        problems.join("\n")
    );
    // The namespaces enforce it too.
    for dir in ["deploy/operator", "deploy/examples/podinfo"] {
        let ns = documents(&kustomize(dir))
            .into_iter()
            .find(|d| d["kind"] == "Namespace")
            .unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
            "{dir}"
        );
    }
}

#[test]
fn the_restricted_check_catches_a_privileged_template() {
    let bad = json!({"kind": "Deployment", "metadata": {"name": "bad"}, "spec": {"template": {"spec": {
        "containers": [{"name": "c", "securityContext": {"privileged": true}}]}}}});
    let problems = restricted_problems(&bad);
    assert_eq!(problems.len(), 5, "{problems:?}");
}

#[test]
fn monitoring_objects_carry_the_release_label_kube_prometheus_stack_selects() {
    for doc in documents(&kustomize("deploy/prometheus")) {
        assert_eq!(
            doc["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{}",
            doc["metadata"]["name"]
        );
        assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/sluice.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for metric in [
        "sluice_requests_total",
        "sluice_request_duration_seconds_bucket",
        "sluice_route_canary_weight",
        "sluice_canary_releases_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "the dashboard has no panel on {metric}"
        );
    }
}

/// The shipped alert rules behave as documented, by `promtool test rules`
/// over tests/prometheus/rules_test.yaml.
#[test]
fn alert_rules_pass_their_promtool_tests() {
    let promtool = which("promtool").unwrap_or_else(|| {
        panic!(
            "promtool is missing: it comes with Debian's prometheus package (tests/run installs it)"
        )
    });
    let rule =
        documents(&std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap())
            .into_iter()
            .find(|d| d["kind"] == "PrometheusRule")
            .expect("rules.yaml holds a PrometheusRule");
    let dir = TempDir::new("promtool");
    std::fs::write(
        dir.path.join("rules.yaml"),
        serde_yaml_ng::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    let test = dir.path.join("rules_test.yaml");
    std::fs::copy(root().join("tests/prometheus/rules_test.yaml"), &test).unwrap();
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.path.join("rules.yaml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ServiceMonitor keeps the operator's `namespace` label (the release's
/// namespace, not the operator's), and the PodMonitor scrapes the port the
/// proxy's pods declare.
#[test]
fn monitors_keep_release_labels_and_scrape_the_proxy_admin_port() {
    let sm = documents(
        &std::fs::read_to_string(root().join("deploy/prometheus/servicemonitor.yaml")).unwrap(),
    );
    assert_eq!(sm[0]["spec"]["endpoints"][0]["honorLabels"], true);
    let pm = documents(
        &std::fs::read_to_string(root().join("deploy/prometheus/podmonitor.yaml")).unwrap(),
    );
    let port = pm[0]["spec"]["podMetricsEndpoints"][0]["port"].clone();
    let user = json!({"metadata": {"name": "app", "uid": "u"}, "spec": {"selector": {"matchLabels": {"app": "app"}},
        "template": {"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}}}});
    let service =
        json!({"spec": {"selector": {"app": "app"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let ports = objects::proxied_ports(&service, &user, 80, None).unwrap();
    let proxy = objects::proxy_deployment(
        "app",
        "shop",
        "img",
        &objects::owner_reference(&user),
        &ports,
        &objects::selector_of(&user),
    );
    let names: Vec<Value> = proxy["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert!(
        names.contains(&port),
        "PodMonitor port {port} not among {names:?}"
    );
}

/// The namespaced install holds nothing cluster-scoped, watches only its
/// namespace, and its Role grants exactly what the ClusterRole does.
#[test]
fn the_namespaced_install_is_a_role_with_the_cluster_roles_rules() {
    let yaml = kustomize("deploy/operator-namespaced");
    validate("operator-namespaced", &yaml);
    let docs = documents(&yaml);
    for d in &docs {
        assert!(
            !["Namespace", "ClusterRole", "ClusterRoleBinding"]
                .contains(&d["kind"].as_str().unwrap()),
            "cluster-scoped {} in the namespaced install",
            d["kind"]
        );
        assert_eq!(
            d["metadata"]["namespace"], "shop",
            "{} {}",
            d["kind"], d["metadata"]["name"]
        );
        for s in d["subjects"].as_array().into_iter().flatten() {
            assert_eq!(
                s["namespace"], "shop",
                "a binding's subject outside the namespace"
            );
        }
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--namespace=$(POD_NAMESPACE)")),
        "{args}"
    );
    let cluster = documents(&kustomize("deploy/operator"));
    let rules_of = |docs: &[Value], kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == "sluice-operator")
            .unwrap_or_else(|| panic!("no {kind} sluice-operator"))["rules"]
            .clone()
    };
    assert_eq!(rules_of(&docs, "Role"), rules_of(&cluster, "ClusterRole"));
}
