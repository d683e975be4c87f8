//! Pure builders of the objects Sluice makes for a canaried Deployment
//! `app`, and the revision hash. No API calls here.
//!
//! - `app-primary`: a copy of the Deployment; every selector label value
//!   gets `-primary`, and ConfigMaps/Secrets the pod template references are
//!   replaced by `<name>-primary` copies, so a canary's new config never
//!   leaks into stable.
//! - Services `app-primary` and `app-canary`.
//! - The proxy: ConfigMap `app-sluice` (key `routes.yaml`), Deployment and
//!   admin Service `app-sluice`, its ServiceAccount/Role/RoleBinding (read
//!   that one ConfigMap), and Secret `app-sluice-admin` (admin token).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const PRIMARY_SUFFIX: &str = "-primary";
pub const PROXY_HTTP_PORT: i32 = 8080;
pub const PROXY_ADMIN_PORT: i32 = 9901;
pub const ADMIN_TOKEN_PATH: &str = "/etc/sluice/admin/token";

/// ConfigMaps and Secrets a pod template references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRefs {
    pub configmaps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

/// Visits every ConfigMap/Secret name field in a pod spec.
fn visit_refs(pod_spec: &mut Value, f: &mut dyn FnMut(&str, &mut Value)) {
    if let Some(volumes) = pod_spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            if let Some(n) = v.pointer_mut("/configMap/name") {
                f("configmap", n);
            }
            if let Some(n) = v.pointer_mut("/secret/secretName") {
                f("secret", n);
            }
            if let Some(sources) = v
                .pointer_mut("/projected/sources")
                .and_then(Value::as_array_mut)
            {
                for s in sources {
                    if let Some(n) = s.pointer_mut("/configMap/name") {
                        f("configmap", n);
                    }
                    if let Some(n) = s.pointer_mut("/secret/name") {
                        f("secret", n);
                    }
                }
            }
        }
    }
    for list in ["containers", "initContainers"] {
        let Some(containers) = pod_spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                for e in env {
                    if let Some(n) = e.pointer_mut("/valueFrom/configMapKeyRef/name") {
                        f("configmap", n);
                    }
                    if let Some(n) = e.pointer_mut("/valueFrom/secretKeyRef/name") {
                        f("secret", n);
                    }
                }
            }
            if let Some(env_from) = c.get_mut("envFrom").and_then(Value::as_array_mut) {
                for e in env_from {
                    if let Some(n) = e.pointer_mut("/configMapRef/name") {
                        f("configmap", n);
                    }
                    if let Some(n) = e.pointer_mut("/secretRef/name") {
                        f("secret", n);
                    }
                }
            }
        }
    }
}

pub fn config_refs(template: &Value) -> ConfigRefs {
    let mut spec = template.get("spec").cloned().unwrap_or(Value::Null);
    let mut refs = ConfigRefs::default();
    visit_refs(&mut spec, &mut |kind, name| {
        if let Some(n) = name.as_str() {
            match kind {
                "configmap" => refs.configmaps.insert(n.to_string()),
                _ => refs.secrets.insert(n.to_string()),
            };
        }
    });
    refs
}

/// JSON with object keys sorted at every level and no whitespace: the same
/// value always gives the same bytes, whatever the serializer's map order.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// The revision: sha256 over canonical JSON of the pod template and the data
/// of every ConfigMap and Secret it references (missing ones as null);
/// the first 16 hex digits. Stable across Sluice versions by construction.
pub fn revision_hash(
    template: &Value,
    configmaps: &BTreeMap<String, Value>,
    secrets: &BTreeMap<String, Value>,
) -> String {
    let input = json!({
        "template": template,
        "configMaps": configmaps,
        "secrets": secrets,
    });
    let digest = Sha256::digest(canonical_json(&input).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub fn primary_name(name: &str) -> String {
    format!("{name}{PRIMARY_SUFFIX}")
}

pub fn canary_service_name(name: &str) -> String {
    format!("{name}-canary")
}

pub fn proxy_name(name: &str) -> String {
    format!("{name}-sluice")
}

pub fn admin_secret_name(name: &str) -> String {
    format!("{name}-sluice-admin")
}

/// Selector labels with `-primary` values.
pub fn primary_labels(selector: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    selector
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v}{PRIMARY_SUFFIX}")))
        .collect()
}

/// The pod template of `app-primary`: selector labels renamed, ConfigMap and
/// Secret references pointed at the `-primary` copies.
pub fn primary_template(template: &Value, selector: &BTreeMap<String, String>) -> Value {
    let mut t = template.clone();
    if !t["metadata"].is_object() {
        t["metadata"] = json!({});
    }
    if !t["metadata"]["labels"].is_object() {
        t["metadata"]["labels"] = json!({});
    }
    for (k, v) in primary_labels(selector) {
        t["metadata"]["labels"][k] = json!(v);
    }
    if let Some(spec) = t.get_mut("spec") {
        visit_refs(spec, &mut |_, name| {
            if let Some(n) = name.as_str() {
                *name = json!(primary_name(n));
            }
        });
    }
    t
}

pub fn owner_reference(deployment: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
        "uid": deployment["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn managed_labels(app: &str) -> Value {
    json!({"app.kubernetes.io/managed-by": "sluice", "sluice.dev/release": app})
}

/// `app-primary` from the user's Deployment.
pub fn primary_deployment(user: &Value, replicas: i64, owner: &Value) -> Value {
    let name = user["metadata"]["name"].as_str().unwrap_or_default();
    let selector = selector_of(user);
    let mut spec = user["spec"].clone();
    spec["replicas"] = json!(replicas);
    spec["selector"] = json!({"matchLabels": primary_labels(&selector)});
    spec["template"] = primary_template(&user["spec"]["template"], &selector);
    let mut labels = user["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    merge_into(&mut labels, &managed_labels(name));
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": primary_name(name), "labels": labels, "ownerReferences": [owner]},
        "spec": spec,
    })
}

pub fn selector_of(deployment: &Value) -> BTreeMap<String, String> {
    string_map(&deployment["spec"]["selector"]["matchLabels"])
}

/// A JSON object of strings (labels, selectors) as a map; empty otherwise.
pub fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn merge_into(target: &mut Value, extra: &Value) {
    if let (Some(t), Some(e)) = (target.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            t.insert(k.clone(), v.clone());
        }
    }
}

/// A copy of a ConfigMap or Secret under its `-primary` name.
pub fn config_copy(source: &Value, owner: &Value, app: &str) -> Value {
    let name = source["metadata"]["name"].as_str().unwrap_or_default();
    let mut copy = json!({
        "apiVersion": source["apiVersion"],
        "kind": source["kind"],
        "metadata": {"name": primary_name(name), "labels": managed_labels(app), "ownerReferences": [owner]},
    });
    for k in ["data", "binaryData", "stringData", "type", "immutable"] {
        if let Some(v) = source.get(k) {
            copy[k] = v.clone();
        }
    }
    copy
}

/// A Service like the user's, selecting `selector`, under another name.
pub fn service_copy(
    user_service: &Value,
    name: &str,
    selector: &BTreeMap<String, String>,
    owner: &Value,
    app: &str,
) -> Value {
    let ports: Vec<Value> = user_service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut p| {
            if let Some(o) = p.as_object_mut() {
                o.remove("nodePort");
            }
            p
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": managed_labels(app), "ownerReferences": [owner]},
        "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
    })
}

pub fn proxy_pod_labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-proxy".to_string(),
        ),
        ("sluice.dev/release".to_string(), app.to_string()),
    ])
}

/// The proxy's config: one route named after the app, stable on
/// `app-primary`, canary on `app-canary`.
pub fn proxy_config(
    app: &str,
    namespace: &str,
    port: i32,
    canary_weight_bp: u32,
) -> sluice_proxy::Config {
    let route_name: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    sluice_proxy::Config {
        listen: format!("0.0.0.0:{PROXY_HTTP_PORT}"),
        admin: sluice_proxy::config::AdminConfig {
            listen: format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
            token_file: Some(ADMIN_TOKEN_PATH.into()),
        },
        limits: Default::default(),
        tls: None,
        routes: vec![sluice_proxy::config::RouteConfig {
            name: route_name,
            hosts: Vec::new(),
            path_prefix: "/".into(),
            protocol: Default::default(),
            stable: format!("http://{}.{namespace}.svc:{port}", primary_name(app)),
            canary: Some(format!(
                "http://{}.{namespace}.svc:{port}",
                canary_service_name(app)
            )),
            canary_weight: sluice_proxy::config::bp_to_percent(canary_weight_bp),
            canary_match: Vec::new(),
            timeouts: Default::default(),
            upstream_tls: None,
            grpc_failure_codes: None,
        }],
    }
}

/// The route name inside the proxy config (metrics `route` label).
pub fn route_name(app: &str) -> String {
    proxy_config(app, "x", 80, 0).routes[0].name.clone()
}

pub fn proxy_configmap(
    app: &str,
    namespace: &str,
    port: i32,
    canary_weight_bp: u32,
    owner: &Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": proxy_name(app), "labels": managed_labels(app), "ownerReferences": [owner]},
        "data": {sluice_proxy::kube_source::CONFIG_KEY: proxy_config(app, namespace, port, canary_weight_bp).to_yaml()},
    })
}

pub fn admin_secret(app: &str, token: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": admin_secret_name(app), "labels": managed_labels(app), "ownerReferences": [owner]},
        "type": "Opaque",
        "stringData": {"token": token},
    })
}

pub fn proxy_rbac(app: &str, owner: &Value) -> [(String, Value); 3] {
    let name = proxy_name(app);
    let meta = json!({"name": name, "labels": managed_labels(app), "ownerReferences": [owner]});
    [
        (
            "serviceaccounts".into(),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}),
        ),
        (
            "roles".into(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
                // The proxy reads and watches its own ConfigMap, nothing else.
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["get", "list", "watch"]}],
            }),
        ),
        (
            "rolebindings".into(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name}],
            }),
        ),
    ]
}

pub fn proxy_deployment(app: &str, namespace: &str, image: &str, owner: &Value) -> Value {
    let labels = proxy_pod_labels(app);
    let mut meta_labels = managed_labels(app);
    merge_into(&mut meta_labels, &json!(labels));
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": proxy_name(app), "labels": meta_labels, "ownerReferences": [owner]},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": PROXY_ADMIN_PORT.to_string(), "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "serviceAccountName": proxy_name(app),
                    "automountServiceAccountToken": true,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "proxy",
                        "image": image,
                        "args": ["--kube-configmap", format!("{namespace}/{}", proxy_name(app)), "--log-format", "json"],
                        "ports": [
                            {"name": "http", "containerPort": PROXY_HTTP_PORT, "protocol": "TCP"},
                            {"name": "admin", "containerPort": PROXY_ADMIN_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10},
                        "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "admin-token", "mountPath": "/etc/sluice/admin", "readOnly": true}],
                    }],
                    "volumes": [{"name": "admin-token", "secret": {"secretName": admin_secret_name(app)}}],
                },
            },
        },
    })
}

/// The proxy's admin Service (metrics for Prometheus and the proxy provider).
pub fn proxy_admin_service(app: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": proxy_name(app), "labels": managed_labels(app), "ownerReferences": [owner]},
        "spec": {
            "type": "ClusterIP",
            "selector": proxy_pod_labels(app),
            "ports": [{"name": "admin", "port": PROXY_ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"}],
        },
    })
}

/// `<hpa>-primary`: the same autoscaler aimed at `app-primary`.
pub fn hpa_twin(hpa: &Value, app: &str, owner: &Value) -> Value {
    let name = hpa["metadata"]["name"].as_str().unwrap_or_default();
    let mut spec = hpa["spec"].clone();
    spec["scaleTargetRef"]["name"] = json!(primary_name(app));
    json!({
        "apiVersion": hpa["apiVersion"],
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": primary_name(name), "labels": managed_labels(app), "ownerReferences": [owner]},
        "spec": spec,
    })
}

/// Whether a Deployment has rolled out its current spec and is fully ready.
/// Whether a Deployment has finished rolling out its current template, by
/// `kubectl rollout status`'s rule: the controller has seen this
/// generation, every replica runs the new template, no pod of an older
/// template is left, and every new pod is available. (`readyReplicas`
/// alone counts old pods too: not enough.)
pub fn rolled_out(d: &Value) -> bool {
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
    let s = &d["status"];
    let count = |f: &str| s[f].as_i64().unwrap_or(0);
    s["observedGeneration"].as_i64().unwrap_or(-1) >= generation
        && count("updatedReplicas") >= want
        && count("replicas") <= count("updatedReplicas")
        && count("availableReplicas") >= count("updatedReplicas")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Value {
        json!({
            "metadata": {"name": "app", "uid": "u1", "labels": {"team": "a"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "app"}},
                "template": {
                    "metadata": {"labels": {"app": "app", "version": "v1"}},
                    "spec": {
                        "containers": [{"name": "c", "image": "app:1",
                            "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}}],
                            "envFrom": [{"secretRef": {"name": "creds"}}]}],
                        "volumes": [{"name": "v", "configMap": {"name": "files"}}],
                    },
                },
            },
        })
    }

    #[test]
    fn the_primary_gets_primary_labels_and_its_own_config_copies() {
        let u = user();
        let p = primary_deployment(&u, 3, &owner_reference(&u));
        assert_eq!(p["metadata"]["name"], "app-primary");
        assert_eq!(p["spec"]["selector"]["matchLabels"]["app"], "app-primary");
        assert_eq!(
            p["spec"]["template"]["metadata"]["labels"]["app"],
            "app-primary"
        );
        assert_eq!(p["spec"]["template"]["metadata"]["labels"]["version"], "v1");
        let c = &p["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["env"][0]["valueFrom"]["configMapKeyRef"]["name"],
            "settings-primary"
        );
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "creds-primary");
        assert_eq!(
            p["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
            "files-primary"
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "u1");
        let refs = config_refs(&u["spec"]["template"]);
        assert_eq!(
            refs.configmaps.into_iter().collect::<Vec<_>>(),
            ["files", "settings"]
        );
        assert_eq!(refs.secrets.into_iter().collect::<Vec<_>>(), ["creds"]);
    }

    #[test]
    fn the_revision_hash_is_canonical_and_tracks_config_data() {
        let t = user()["spec"]["template"].clone();
        let cms = BTreeMap::from([("settings".to_string(), json!({"k": "1"}))]);
        let a = revision_hash(&t, &cms, &BTreeMap::new());
        // Same content, keys in another order: same hash.
        let reordered: Value = serde_json::from_str(&canonical_json(&t)).unwrap();
        assert_eq!(a, revision_hash(&reordered, &cms, &BTreeMap::new()));
        let cms2 = BTreeMap::from([("settings".to_string(), json!({"k": "2"}))]);
        assert_ne!(a, revision_hash(&t, &cms2, &BTreeMap::new()));
        // Pinned: the scheme must not change between Sluice versions.
        assert_eq!(
            canonical_json(&json!({"b": [1, {"d": 2, "c": 3}], "a": "x"})),
            r#"{"a":"x","b":[1,{"c":3,"d":2}]}"#
        );
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn the_proxy_config_is_valid_for_the_proxy() {
        let c = proxy_config("shop.web", "prod", 8080, 2500);
        assert!(
            c.validate().is_ok()
                || c.validate()
                    .unwrap_err()
                    .0
                    .iter()
                    .all(|e| e.path == "admin.token_file")
        );
        assert_eq!(c.routes[0].name, "shop-web");
        assert_eq!(c.routes[0].stable, "http://shop.web-primary.prod.svc:8080");
        assert_eq!(c.routes[0].canary_weight, 25.0);
    }
}
