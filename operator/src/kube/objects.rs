//! Pure builders of the objects Sluice makes for a canaried Deployment
//! `app`, and the revision hash. No API calls here.
//!
//! - `app-primary`: a copy of the Deployment; every selector label value
//!   gets `-primary`, and ConfigMaps/Secrets the pod template references are
//!   replaced by `app-primary-<name>` copies (one set per app, so two apps
//!   sharing a ConfigMap never overwrite each other's copy), so a canary's
//!   new config never leaks into stable.
//!
//! Everything Sluice makes carries `app.kubernetes.io/managed-by: sluice`
//! and an owner reference to the user's Deployment; [`is_ours`] is the
//! test every overwrite and delete passes first.
//! - Services `app-primary` and `app-canary`.
//! - The proxy: ConfigMap `app-sluice` (key `routes.yaml`), Deployment and
//!   admin Service `app-sluice`, its ServiceAccount/Role/RoleBinding (read
//!   that one ConfigMap), and Secret `app-sluice-admin` (admin token).

use super::knobs::{Autoscale, ProxySettings, RouteSettings};
use crate::plan::Traffic;
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

/// The revision of a release: sha256 over canonical JSON of
///
/// - the pod template **as the user wrote it**: [`strip_defaults`] removes
///   the values the API server fills in (and empty maps, lists and nulls),
///   so a cluster that starts defaulting a field, or a client library that
///   starts exposing one, does not make a release of an unchanged template;
/// - the data of every ConfigMap the template references (missing ones as
///   null);
/// - for every Secret it references, [`secret_digest`]: a keyed hash, never
///   a plain hash of the data, because the revision is readable by anyone
///   who can read the Deployment.
///
/// The first 16 hex digits. Stable across Sluice versions by construction
/// (pinned by tests).
pub fn revision_hash(
    template: &Value,
    configmaps: &BTreeMap<String, Value>,
    secrets: &BTreeMap<String, Value>,
) -> String {
    let input = json!({
        "template": strip_defaults(template),
        "configMaps": configmaps,
        "secrets": secrets,
    });
    let digest = Sha256::digest(canonical_json(&input).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// What a revision (and the primary's config hash) records of a Secret:
/// HMAC-SHA256 of its data keyed by the Secret's uid. It changes when the
/// data changes, and someone who can read the Deployment but not the
/// Secret cannot test guesses of the data against it.
pub fn secret_digest(uid: &str, data: &Value) -> String {
    let mac = hmac_sha256(uid.as_bytes(), canonical_json(data).as_bytes());
    mac.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pod template without the values the API server defaults (Kubernetes
/// 1.35's `SetDefaults_*` for pods and containers) and without empty maps,
/// lists and nulls: what determines a release. Removed when equal to their
/// default:
///
/// - pod spec: `restartPolicy: Always`, `dnsPolicy: ClusterFirst`,
///   `schedulerName: default-scheduler`, `terminationGracePeriodSeconds: 30`,
///   `securityContext: {}`, `enableServiceLinks: true`;
/// - containers (and init containers): `terminationMessagePath:
///   /dev/termination-log`, `terminationMessagePolicy: File`,
///   `imagePullPolicy` (`Always` for `:latest` or untagged images,
///   `IfNotPresent` otherwise), `resources: {}`, ports' `protocol: TCP`;
/// - probes: `timeoutSeconds: 1`, `periodSeconds: 10`,
///   `successThreshold: 1`, `failureThreshold: 3`, `httpGet.scheme: HTTP`;
/// - volumes: `defaultMode: 420` of ConfigMap, Secret, projected and
///   downward-API volumes; env `fieldRef.apiVersion: v1`;
/// - `metadata.creationTimestamp: null`.
pub fn strip_defaults(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("creationTimestamp");
    }
    if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
        let defaults = [
            ("restartPolicy", json!("Always")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("enableServiceLinks", json!(true)),
        ];
        remove_equal(spec, &defaults);
        for list in ["containers", "initContainers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                strip_container(c);
            }
        }
        for v in spec
            .get_mut("volumes")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for kind in ["configMap", "secret", "projected", "downwardAPI"] {
                if let Some(k) = v.get_mut(kind).and_then(Value::as_object_mut) {
                    remove_equal(k, &[("defaultMode", json!(420))]);
                }
            }
        }
    }
    drop_empty(&mut t);
    t
}

fn remove_equal(map: &mut serde_json::Map<String, Value>, defaults: &[(&str, Value)]) {
    for (k, v) in defaults {
        if map.get(*k) == Some(v) {
            map.remove(*k);
        }
    }
}

fn strip_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let Some(m) = c.as_object_mut() else { return };
    let last = image.rsplit('/').next().unwrap_or_default();
    let untagged_or_latest =
        !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
    let pull = if untagged_or_latest {
        "Always"
    } else {
        "IfNotPresent"
    };
    remove_equal(
        m,
        &[
            ("terminationMessagePath", json!("/dev/termination-log")),
            ("terminationMessagePolicy", json!("File")),
            ("imagePullPolicy", json!(pull)),
        ],
    );
    for p in m
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = p.as_object_mut() {
            remove_equal(p, &[("protocol", json!("TCP"))]);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe).and_then(Value::as_object_mut) {
            remove_equal(
                p,
                &[
                    ("timeoutSeconds", json!(1)),
                    ("periodSeconds", json!(10)),
                    ("successThreshold", json!(1)),
                    ("failureThreshold", json!(3)),
                ],
            );
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                remove_equal(h, &[("scheme", json!("HTTP"))]);
            }
        }
    }
    for e in m
        .get_mut("env")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(f) = e
            .pointer_mut("/valueFrom/fieldRef")
            .and_then(Value::as_object_mut)
        {
            remove_equal(f, &[("apiVersion", json!("v1"))]);
        }
    }
}

/// Removes nulls and empty maps and lists, bottom-up.
fn drop_empty(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                drop_empty(x);
            }
            m.retain(|_, x| !is_empty(x));
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Whether `object` is Sluice's for the Deployment whose uid is
/// `owner_uid`: it carries `app.kubernetes.io/managed-by: sluice` and an
/// owner reference to that Deployment. Sluice overwrites and deletes only
/// such objects; anything else with a name it would use (a Flagger
/// primary, a user's own `db-primary` Secret) is left alone.
pub fn is_ours(object: &Value, owner_uid: &str) -> bool {
    object["metadata"]["labels"][MANAGED_BY] == "sluice"
        && object["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid))
}

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The longest name suffix Sluice adds to a Service name (`-primary`).
const LONGEST_SERVICE_SUFFIX: usize = PRIMARY_SUFFIX.len();

/// Checks that every name and label value Sluice derives from `app` and
/// its selector stays within Kubernetes' limits: Service names are DNS-1035
/// labels (63 characters), label values 63 characters.
pub fn check_names(app: &str, selector: &BTreeMap<String, String>) -> Result<(), String> {
    let longest = primary_name(app);
    if longest.len() > 63 {
        return Err(format!(
            "the Service name {longest} would be {} characters; Kubernetes allows 63 (a DNS-1035 label), so the Deployment name may have at most {} characters",
            longest.len(),
            63 - LONGEST_SERVICE_SUFFIX
        ));
    }
    for (k, v) in selector {
        let value = format!("{v}{PRIMARY_SUFFIX}");
        if value.len() > 63 {
            return Err(format!(
                "the selector label {k}={v} becomes {k}={value} on {longest}, {} characters; label values may have at most 63",
                value.len()
            ));
        }
    }
    Ok(())
}

pub fn primary_name(name: &str) -> String {
    format!("{name}{PRIMARY_SUFFIX}")
}

pub fn canary_service_name(name: &str) -> String {
    format!("{name}-canary")
}

/// Suffix of the baseline arm's Deployment, Service and pod label values
/// (`sluice.dev/baseline-arm`).
pub const BASELINE_SUFFIX: &str = "-baseline";

/// The baseline arm's Deployment and Service: `app-baseline`.
pub fn baseline_name(name: &str) -> String {
    format!("{name}{BASELINE_SUFFIX}")
}

/// Selector labels with `-baseline` values: the baseline arm's pods carry
/// these instead of the primary's, so Service `app-primary` never selects
/// them and Service `app-baseline` selects nothing else.
pub fn baseline_labels(selector: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    selector
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v}{BASELINE_SUFFIX}")))
        .collect()
}

/// [`check_names`] for the baseline arm's longer suffix (`-baseline`).
pub fn check_baseline_names(app: &str, selector: &BTreeMap<String, String>) -> Result<(), String> {
    let longest = baseline_name(app);
    if longest.len() > 63 {
        return Err(format!(
            "the baseline arm's Service name {longest} would be {} characters; Kubernetes allows 63 (a DNS-1035 label), so with sluice.dev/baseline-arm the Deployment name may have at most {} characters",
            longest.len(),
            63 - BASELINE_SUFFIX.len()
        ));
    }
    for (k, v) in selector {
        let value = format!("{v}{BASELINE_SUFFIX}");
        if value.len() > 63 {
            return Err(format!(
                "the selector label {k}={v} becomes {k}={value} on the baseline arm {longest}, {} characters; label values may have at most 63",
                value.len()
            ));
        }
    }
    Ok(())
}

/// The baseline arm's Deployment: the PRIMARY's pod template (the stable
/// version, with the primary's config copies) under the baseline's own
/// selector labels, at `replicas` (the canary's count during a release,
/// 0 between releases). `user` is the user's Deployment (its selector),
/// `primary` the running `app-primary`.
pub fn baseline_deployment(user: &Value, primary: &Value, replicas: i64, owner: &Value) -> Value {
    let name = user["metadata"]["name"].as_str().unwrap_or_default();
    let selector = selector_of(user);
    let mut template = primary["spec"]["template"].clone();
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    for (k, v) in baseline_labels(&selector) {
        template["metadata"]["labels"][k] = json!(v);
    }
    let mut spec = primary["spec"].clone();
    if let Some(o) = spec.as_object_mut() {
        // The primary's own rollout settings stay; nothing Sluice or an HPA
        // set on it for the primary's sake (paused, revision history) matters.
        o.remove("paused");
    }
    spec["replicas"] = json!(replicas);
    spec["selector"] = json!({"matchLabels": baseline_labels(&selector)});
    spec["template"] = template;
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": baseline_name(name), "labels": managed_labels(name), "ownerReferences": [owner]},
        "spec": spec,
    })
}

pub fn proxy_name(name: &str) -> String {
    format!("{name}-sluice")
}

pub fn admin_secret_name(name: &str) -> String {
    format!("{name}-sluice-admin")
}

/// The name of `app-primary`'s copy of ConfigMap or Secret `name`.
pub fn config_copy_name(app: &str, name: &str) -> String {
    format!("{}-{name}", primary_name(app))
}

/// Selector labels with `-primary` values.
pub fn primary_labels(selector: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    selector
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v}{PRIMARY_SUFFIX}")))
        .collect()
}

/// The pod template of `app-primary`: selector labels renamed, ConfigMap and
/// Secret references pointed at `app`'s copies, and the hash of the copied
/// config ([`CONFIG_HASH`]) so that a config-only release restarts the
/// primary's pods when it is promoted.
pub fn primary_template(
    template: &Value,
    selector: &BTreeMap<String, String>,
    app: &str,
    config_hash: &str,
) -> Value {
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
                *name = json!(config_copy_name(app, n));
            }
        });
    }
    if !config_hash.is_empty() {
        if !t["metadata"]["annotations"].is_object() {
            t["metadata"]["annotations"] = json!({});
        }
        t["metadata"]["annotations"][CONFIG_HASH] = json!(config_hash);
    }
    t
}

/// Pod-template annotation of `app-primary`: the hash of the config copies
/// its pods use.
pub const CONFIG_HASH: &str = "sluice.dev/config-hash";

/// The hash of the config a template references: ConfigMap data and
/// [`secret_digest`]s, as the revision hash takes them.
pub fn config_hash(
    configmaps: &BTreeMap<String, Value>,
    secrets: &BTreeMap<String, Value>,
) -> String {
    if configmaps.is_empty() && secrets.is_empty() {
        return String::new();
    }
    let input = json!({"configMaps": configmaps, "secrets": secrets});
    let digest = Sha256::digest(canonical_json(&input).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
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
pub fn primary_deployment(user: &Value, replicas: i64, owner: &Value, config_hash: &str) -> Value {
    let name = user["metadata"]["name"].as_str().unwrap_or_default();
    let selector = selector_of(user);
    let mut spec = user["spec"].clone();
    spec["replicas"] = json!(replicas);
    spec["selector"] = json!({"matchLabels": primary_labels(&selector)});
    spec["template"] = primary_template(&user["spec"]["template"], &selector, name, config_hash);
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

/// `app`'s copy of a ConfigMap or Secret, named by [`config_copy_name`].
pub fn config_copy(source: &Value, owner: &Value, app: &str) -> Value {
    let name = source["metadata"]["name"].as_str().unwrap_or_default();
    let mut copy = json!({
        "apiVersion": source["apiVersion"],
        "kind": source["kind"],
        "metadata": {"name": config_copy_name(app, name), "labels": managed_labels(app), "ownerReferences": [owner]},
    });
    for k in ["data", "binaryData", "stringData", "type", "immutable"] {
        if let Some(v) = source.get(k) {
            copy[k] = v.clone();
        }
    }
    copy
}

/// Service `app-primary`: the user's Service as it was before the
/// take-over (`original`), selecting Deployment `d`'s primary pods.
pub fn primary_service(original: &Value, d: &Value, app: &str) -> Value {
    service_copy(
        original,
        &primary_name(app),
        &primary_labels(&selector_of(d)),
        &owner_reference(d),
        app,
    )
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

/// One port of the user's Service as the proxy serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedPort {
    /// The Service port (what clients and the `-primary`/`-canary`
    /// Services use).
    pub service_port: i32,
    /// The Service port's name ("" when unnamed).
    pub name: String,
    /// The container port the Service targets on the user's pods: the proxy
    /// listens on the same port, so the Service's `targetPort` never changes.
    pub container_port: i32,
    /// A named `targetPort`: the proxy's container declares the same name.
    pub target_name: Option<String>,
    /// The route speaks HTTP/2 to the upstreams (see
    /// [`super::ports::is_http2`]).
    pub http2: bool,
    /// An HTTP port (a route); else forwarded as plain TCP to the stable
    /// (see [`super::ports`]).
    pub http: bool,
}

/// The proxy's admin port: 9901, or the next one no proxied port uses.
pub fn admin_port(ports: &[ProxiedPort]) -> i32 {
    (PROXY_ADMIN_PORT..)
        .find(|p| ports.iter().all(|x| x.container_port != *p))
        .expect("a free port")
}

/// Every port of the user's (original) Service, resolved against the
/// user's pod template. The proxy serves all of them (never a port that
/// nothing listens on); `main` comes first. Ports Sluice cannot proxy are
/// refused, naming the port. Which are HTTP: [`super::ports`].
pub fn proxied_ports(
    service: &Value,
    user: &Value,
    main: i32,
    http_ports: Option<&[super::annotations::PortRef]>,
) -> Result<Vec<ProxiedPort>, String> {
    if let Some(listed) = http_ports {
        super::ports::check_http_ports(service, listed)?;
    }
    let containers: Vec<Value> = user["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let declared = |name: &str| {
        containers
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_i64())
    };
    let mut out: Vec<ProxiedPort> = Vec::new();
    for p in service["spec"]["ports"].as_array().into_iter().flatten() {
        let service_port = p["port"].as_i64().unwrap_or(0) as i32;
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let label = if name.is_empty() {
            service_port.to_string()
        } else {
            name.clone()
        };
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        if protocol != "TCP" {
            return Err(format!(
                "Service port {label} is {protocol}; the Sluice proxy forwards TCP only (HTTP, or plain TCP), and a taken-over Service sends every port to it: move the {protocol} port to a Service of its own"
            ));
        }
        let (container_port, target_name) = match &p["targetPort"] {
            Value::Null => (service_port, None),
            Value::Number(n) => (n.as_i64().unwrap_or(0) as i32, None),
            Value::String(s) => match s.parse::<i32>() {
                Ok(n) => (n, None),
                Err(_) => match declared(s) {
                    Some(n) => (n as i32, Some(s.clone())),
                    None => {
                        return Err(format!(
                            "Service port {label} targets the port name `{s}`, which no container of the Deployment declares"
                        ));
                    }
                },
            },
            other => {
                return Err(format!(
                    "Service port {label}: targetPort {other} is not a port"
                ));
            }
        };
        let http2 = super::ports::is_http2(p);
        let http = super::ports::is_http(p, service_port == main, http_ports);
        if service_port == main && !http {
            return Err(format!(
                "Service port {label} is the port Sluice judges the release on ({} or the first port) but it is not HTTP (appProtocol, name or {}): point {} at an HTTP port, or list this one in {}",
                super::annotations::PORT,
                super::annotations::HTTP_PORTS,
                super::annotations::PORT,
                super::annotations::HTTP_PORTS,
            ));
        }
        if out.iter().any(|o| o.container_port == container_port) {
            // Two Service ports on one container port: one listener serves both.
            continue;
        }
        out.push(ProxiedPort {
            service_port,
            name,
            container_port,
            target_name,
            http2,
            http,
        });
    }
    match out.iter().position(|p| p.service_port == main) {
        Some(i) => {
            let m = out.remove(i);
            out.insert(0, m);
            Ok(out)
        }
        None => Err(format!("the Service has no port {main}")),
    }
}

/// The route name of `app`'s main port (metrics `route` label).
pub fn route_name(app: &str) -> String {
    app.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The route (and listener) name of an extra port.
fn port_route_name(app: &str, p: &ProxiedPort) -> String {
    let suffix = if p.name.is_empty() {
        format!("port-{}", p.service_port)
    } else {
        route_name(&p.name)
    };
    let mut name = format!("{}-{suffix}", route_name(app));
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// The proxy's config: one route per Service port (the main port on
/// `listen`, the others on their own listeners), stable on `app-primary`,
/// canary on `app-canary`, all at the same weight (and, while a release
/// with a baseline arm runs, baseline on `app-baseline`: every HTTP route
/// gives it the canary's share). `version` identifies
/// the config (its replicas report it back).
pub fn proxy_config(
    app: &str,
    namespace: &str,
    ports: &[ProxiedPort],
    canary_weight_bp: u32,
) -> sluice_proxy::Config {
    proxy_config_with(app, namespace, ports, canary_weight_bp, &Traffic::default())
}

/// [`proxy_config`] with a release's route settings (affinity, mirroring)
/// on every route.
pub fn proxy_config_with(
    app: &str,
    namespace: &str,
    ports: &[ProxiedPort],
    canary_weight_bp: u32,
    traffic: &Traffic,
) -> sluice_proxy::Config {
    proxy_config_for(
        app,
        namespace,
        ports,
        canary_weight_bp,
        traffic,
        &RouteSettings::default(),
    )
}

/// [`proxy_config_with`] with the app's own route settings (A/B rules,
/// timeouts: `sluice.dev/match`, `sluice.dev/request-timeout`, ...).
pub fn proxy_config_for(
    app: &str,
    namespace: &str,
    ports: &[ProxiedPort],
    canary_weight_bp: u32,
    traffic: &Traffic,
    app_route: &RouteSettings,
) -> sluice_proxy::Config {
    let route = |p: &ProxiedPort, name: String, listener: Option<String>| {
        sluice_proxy::config::RouteConfig {
            name,
            hosts: Vec::new(),
            path_prefix: "/".into(),
            matches: Vec::new(),
            request_headers: None,
            response_headers: None,
            protocol: if p.http2 {
                sluice_proxy::config::Protocol::Http2
            } else {
                Default::default()
            },
            stable: format!(
                "http://{}.{namespace}.svc:{}",
                primary_name(app),
                p.service_port
            ),
            canary: Some(format!(
                "http://{}.{namespace}.svc:{}",
                canary_service_name(app),
                p.service_port
            )),
            baseline: app_route.baseline_arm.then(|| {
                format!(
                    "http://{}.{namespace}.svc:{}",
                    baseline_name(app),
                    p.service_port
                )
            }),
            canary_weight: sluice_proxy::config::bp_to_percent(canary_weight_bp),
            canary_match: app_route.canary_match.clone(),
            affinity: traffic.affinity.clone(),
            mirror: traffic.mirror.clone(),
            timeouts: app_route.timeouts.clone(),
            upstream_tls: None,
            grpc_failure_codes: None,
            listener,
            underscore_headers: Default::default(),
            failover: Default::default(),
            direct_response: None,
        }
    };
    let mut routes = Vec::new();
    let mut listeners = Vec::new();
    let mut tcp_listeners = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        if !p.http {
            // Plain TCP, to the stable pods only: no split, no HTTP.
            tcp_listeners.push(sluice_proxy::config::TcpListenerConfig {
                name: port_route_name(app, p),
                listen: format!("0.0.0.0:{}", p.container_port),
                upstream: format!("{}.{namespace}.svc:{}", primary_name(app), p.service_port),
                timeouts: Default::default(),
            });
        } else if i == 0 {
            routes.push(route(p, route_name(app), None));
        } else {
            let name = port_route_name(app, p);
            listeners.push(sluice_proxy::config::ListenerConfig {
                name: name.clone(),
                listen: format!("0.0.0.0:{}", p.container_port),
            });
            routes.push(route(p, name.clone(), Some(name)));
        }
    }
    sluice_proxy::Config {
        listen: format!(
            "0.0.0.0:{}",
            ports.first().map_or(PROXY_HTTP_PORT, |p| p.container_port)
        ),
        admin: sluice_proxy::config::AdminConfig {
            listen: format!("0.0.0.0:{}", admin_port(ports)),
            token_file: Some(ADMIN_TOKEN_PATH.into()),
        },
        limits: Default::default(),
        forwarding: Default::default(),
        tls: None,
        routes,
        listeners,
        tcp_listeners,
    }
}

pub fn proxy_configmap(
    app: &str,
    namespace: &str,
    ports: &[ProxiedPort],
    canary_weight_bp: u32,
    owner: &Value,
) -> Value {
    proxy_configmap_with(
        app,
        namespace,
        ports,
        canary_weight_bp,
        owner,
        &Traffic::default(),
    )
}

/// [`proxy_configmap`] with a release's route settings.
pub fn proxy_configmap_with(
    app: &str,
    namespace: &str,
    ports: &[ProxiedPort],
    canary_weight_bp: u32,
    owner: &Value,
    traffic: &Traffic,
) -> Value {
    proxy_configmap_for(
        app,
        namespace,
        ports,
        canary_weight_bp,
        owner,
        traffic,
        &RouteSettings::default(),
    )
}

/// [`proxy_configmap_with`] with the app's own route settings.
pub fn proxy_configmap_for(
    app: &str,
    namespace: &str,
    ports: &[ProxiedPort],
    canary_weight_bp: u32,
    owner: &Value,
    traffic: &Traffic,
    app_route: &RouteSettings,
) -> Value {
    let config = proxy_config_for(app, namespace, ports, canary_weight_bp, traffic, app_route);
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": proxy_name(app), "labels": managed_labels(app), "ownerReferences": [owner]},
        "data": {sluice_proxy::kube_source::CONFIG_KEY: config.to_yaml()},
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

/// Seconds a terminating proxy keeps serving after SIGTERM with `/readyz`
/// failing (`--drain-delay`), so endpoints drop it before it closes.
pub const PROXY_DRAIN_DELAY_SECS: i64 = 5;
/// Seconds in-flight requests get after the listeners close.
pub const PROXY_DRAIN_TIMEOUT_SECS: i64 = 20;

/// The proxy's Deployment. Its pods carry the proxy's labels (its selector)
/// and the user's Service's original selector `service_labels`, and listen
/// on the user's container ports: a re-apply of the user's Service
/// (selector merged or replaced, target ports as they were) still reaches
/// a proxy, never a port nothing listens on. Two replicas, spread across
/// nodes and zones, a PodDisruptionBudget ([`proxy_pdb`]), and a drain
/// sequence on termination: `/readyz` fails first, the listeners keep
/// serving for the drain delay, then in-flight requests get the drain
/// timeout.
pub fn proxy_deployment(
    app: &str,
    namespace: &str,
    image: &str,
    owner: &Value,
    ports: &[ProxiedPort],
    service_labels: &BTreeMap<String, String>,
) -> Value {
    proxy_deployment_for(
        app,
        namespace,
        image,
        owner,
        ports,
        service_labels,
        &ProxySettings::default(),
    )
}

/// [`proxy_deployment`] with the app's replicas and resources
/// (`sluice.dev/proxy-replicas`, `sluice.dev/proxy-resources`). With
/// `sluice.dev/proxy-autoscale` the replicas written here are only the
/// start: [`proxy_hpa`] owns them (see `ensure_proxy`).
pub fn proxy_deployment_for(
    app: &str,
    namespace: &str,
    image: &str,
    owner: &Value,
    ports: &[ProxiedPort],
    service_labels: &BTreeMap<String, String>,
    settings: &ProxySettings,
) -> Value {
    let selector = proxy_pod_labels(app);
    let mut pod_labels: BTreeMap<String, String> = service_labels.clone();
    pod_labels.extend(selector.clone());
    let mut meta_labels = managed_labels(app);
    merge_into(&mut meta_labels, &json!(selector));
    let admin = admin_port(ports);
    let mut container_ports: Vec<Value> = ports
        .iter()
        .map(|p| match &p.target_name {
            Some(n) => json!({"name": n, "containerPort": p.container_port, "protocol": "TCP"}),
            None => json!({"containerPort": p.container_port, "protocol": "TCP"}),
        })
        .collect();
    container_ports
        .push(json!({"name": "sluice-admin", "containerPort": admin, "protocol": "TCP"}));
    let mut pod_security = json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}});
    if ports.iter().any(|p| p.container_port < 1024) {
        // A safe sysctl: lets the non-root proxy bind the app's low port.
        pod_security["sysctls"] =
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
    }
    let spread = |key: &str| json!({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector}});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": proxy_name(app), "labels": meta_labels, "ownerReferences": [owner]},
        "spec": {
            "replicas": settings.autoscale.map_or(settings.replicas, |a| a.min),
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": admin.to_string(), "prometheus.io/path": "/metrics", LISTENER_LAYOUT: listener_layout(ports)},
                },
                "spec": {
                    "serviceAccountName": proxy_name(app),
                    "automountServiceAccountToken": true,
                    "terminationGracePeriodSeconds": PROXY_DRAIN_DELAY_SECS + PROXY_DRAIN_TIMEOUT_SECS + 5,
                    "securityContext": pod_security,
                    "topologySpreadConstraints": [spread("kubernetes.io/hostname"), spread("topology.kubernetes.io/zone")],
                    "containers": [{
                        "name": "proxy",
                        "image": image,
                        "args": [
                            "--kube-configmap", format!("{namespace}/{}", proxy_name(app)),
                            "--log-format", "json",
                            format!("--drain-delay={PROXY_DRAIN_DELAY_SECS}s"),
                            format!("--drain-timeout={PROXY_DRAIN_TIMEOUT_SECS}s"),
                        ],
                        "ports": container_ports,
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "sluice-admin"}, "periodSeconds": 2, "failureThreshold": 1},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "sluice-admin"}, "periodSeconds": 10},
                        "resources": settings.resources,
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

/// How a replica whose last config reload was refused is reported (a
/// [`ReplicaConfig`] error): this, then the digest it still serves.
pub const REFUSED: &str = "refused its last config reload and serves ";

/// Whether a proxy's metrics say its last config reload was refused
/// (`sluice_config_last_reload_successful 0`): the ConfigMap holds a
/// config it would not take (a listener change needs new pods), and it
/// keeps serving the one before.
pub fn reload_refused(metrics: &str) -> bool {
    metrics.lines().any(|l| {
        l.strip_prefix("sluice_config_last_reload_successful")
            .is_some_and(|rest| rest.trim() == "0")
    })
}

/// What a proxy's metrics text says about the config it serves, as a
/// [`super::ReplicaConfig`] digest: the digest, or [`REFUSED`] and the
/// digest when its last reload was refused; `None` when it reports none.
pub fn replica_digest(metrics: &str) -> Option<Result<String, String>> {
    let digest = super::proxy::served_digest(metrics)?;
    Some(if reload_refused(metrics) {
        Err(format!("{REFUSED}{digest}"))
    } else {
        Ok(digest)
    })
}

/// Pod-template annotation of the proxy: [`listener_layout`]. The proxy
/// refuses a config reload that adds, removes or moves a listener (it
/// needs a restart), so a change of which ports are HTTP, HTTP/2 or plain
/// TCP (`sluice.dev/http-ports`, a port's `appProtocol` or name) changes
/// this annotation, and the Deployment rolls its pods onto the new layout.
pub const LISTENER_LAYOUT: &str = "sluice.dev/listener-layout";

/// A digest of the proxy's listener layout: each proxied port's container
/// port and kind (`http`, `h2` or `tcp`), in order (the first port is the
/// main listener). The first 16 hex digits of a SHA-256.
pub fn listener_layout(ports: &[ProxiedPort]) -> String {
    let text = ports
        .iter()
        .map(|p| {
            let kind = match (p.http, p.http2) {
                (false, _) => "tcp",
                (true, true) => "h2",
                (true, false) => "http",
            };
            format!("{}/{kind}", p.container_port)
        })
        .collect::<Vec<_>>()
        .join(",");
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// At most one proxy replica is disrupted voluntarily (node drains) at a time.
pub fn proxy_pdb(app: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": proxy_name(app), "labels": managed_labels(app), "ownerReferences": [owner]},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": proxy_pod_labels(app)}},
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
            "ports": [{"name": "admin", "port": PROXY_ADMIN_PORT, "targetPort": "sluice-admin", "protocol": "TCP"}],
        },
    })
}

/// The proxy's HorizontalPodAutoscaler (`sluice.dev/proxy-autoscale`),
/// named like the proxy Deployment it scales, on CPU utilisation.
pub fn proxy_hpa(app: &str, owner: &Value, autoscale: &Autoscale) -> Value {
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": proxy_name(app), "labels": managed_labels(app), "ownerReferences": [owner]},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": proxy_name(app)},
            "minReplicas": autoscale.min,
            "maxReplicas": autoscale.max,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": autoscale.cpu_percent}},
            }],
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
        let p = primary_deployment(&u, 3, &owner_reference(&u), "abc");
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
            "app-primary-settings"
        );
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "app-primary-creds");
        assert_eq!(
            p["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH],
            "abc"
        );
        assert_eq!(
            p["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
            "app-primary-files"
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
        let ports = [ProxiedPort {
            service_port: 8080,
            name: "http".into(),
            container_port: 9898,
            target_name: None,
            http2: false,
            http: true,
        }];
        let c = proxy_config("shop.web", "prod", &ports, 2500);
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

    /// The API server's defaults and empty values do not make a revision;
    /// a change the user makes does.
    #[test]
    fn the_revision_ignores_defaulted_fields_and_empty_values() {
        let t = user()["spec"]["template"].clone();
        let base = revision_hash(&t, &BTreeMap::new(), &BTreeMap::new());
        let mut defaulted = t.clone();
        let spec = &mut defaulted["spec"];
        spec["restartPolicy"] = json!("Always");
        spec["dnsPolicy"] = json!("ClusterFirst");
        spec["schedulerName"] = json!("default-scheduler");
        spec["terminationGracePeriodSeconds"] = json!(30);
        spec["securityContext"] = json!({});
        spec["volumes"][0]["configMap"]["defaultMode"] = json!(420);
        let c = &mut spec["containers"][0];
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["terminationMessagePolicy"] = json!("File");
        c["imagePullPolicy"] = json!("IfNotPresent");
        c["resources"] = json!({});
        c["ports"] = json!([{"containerPort": 80, "protocol": "TCP"}]);
        c["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 80, "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3});
        defaulted["metadata"]["creationTimestamp"] = Value::Null;
        let mut declared = t.clone();
        declared["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80}]);
        declared["spec"]["containers"][0]["readinessProbe"] =
            json!({"httpGet": {"path": "/", "port": 80}});
        let declared_hash = revision_hash(&declared, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            revision_hash(&defaulted, &BTreeMap::new(), &BTreeMap::new()),
            declared_hash
        );
        assert_ne!(
            base, declared_hash,
            "ports and a probe are the user's change"
        );
        // A non-default value is the user's choice.
        let mut chosen = declared.clone();
        chosen["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
        assert_ne!(
            revision_hash(&chosen, &BTreeMap::new(), &BTreeMap::new()),
            declared_hash
        );
        // `:latest` defaults to Always.
        let mut latest = t.clone();
        latest["spec"]["containers"][0]["image"] = json!("app:latest");
        let plain = revision_hash(&latest, &BTreeMap::new(), &BTreeMap::new());
        latest["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
        assert_eq!(
            revision_hash(&latest, &BTreeMap::new(), &BTreeMap::new()),
            plain
        );
        // Pinned: this template's revision must not change between versions.
        assert_eq!(base, "267b6fb250600550");
    }

    #[test]
    fn a_secret_is_recorded_by_a_keyed_digest_never_a_plain_hash() {
        let data = json!({"password": "aHVudGVyMg=="});
        let a = secret_digest("uid-1", &data);
        assert_eq!(a, secret_digest("uid-1", &data));
        assert_ne!(
            a,
            secret_digest("uid-2", &data),
            "keyed by the Secret's uid"
        );
        assert_ne!(a, secret_digest("uid-1", &json!({"password": "b3RoZXI="})));
        let plain: String = Sha256::digest(canonical_json(&data).as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(a, plain);
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_labelled_and_owned_objects_are_ours() {
        let ours = json!({"metadata": {"labels": {MANAGED_BY: "sluice"}, "ownerReferences": [{"uid": "u1"}]}});
        assert!(is_ours(&ours, "u1"));
        assert!(!is_ours(&ours, "u2"), "another app's");
        let unlabelled = json!({"metadata": {"ownerReferences": [{"uid": "u1"}]}});
        assert!(!is_ours(&unlabelled, "u1"));
        let flagger = json!({"metadata": {"labels": {MANAGED_BY: "flagger"}}});
        assert!(!is_ours(&flagger, "u1"));
    }

    #[test]
    fn names_past_the_limits_are_refused_naming_the_limit() {
        let app = "a".repeat(56);
        let e = check_names(&app, &BTreeMap::new()).unwrap_err();
        assert!(
            e.contains("64 characters") && e.contains("at most 55"),
            "{e}"
        );
        assert!(check_names(&"a".repeat(55), &BTreeMap::new()).is_ok());
        let selector = BTreeMap::from([("app".to_string(), "v".repeat(56))]);
        let e = check_names("web", &selector).unwrap_err();
        assert!(e.contains("label values may have at most 63"), "{e}");
    }
}
