//! What the API server checks before it stores an object, for the kinds
//! Sluice touches, with its messages, reasons and field paths (from the
//! Kubernetes API reference and `k8s.io/apimachinery` validation):
//!
//! - decoding: a value of the wrong JSON type is a 400; an unknown field is
//!   a 400 under `fieldValidation=Strict`, else dropped with a warning;
//! - metadata: names (DNS-1123 subdomain, or DNS-1035 label for Services,
//!   path segments for RBAC), label keys and values (63 characters), one
//!   controller owner reference, complete owner references;
//! - per kind: a Deployment's selector must be non-empty and match its
//!   template's labels and is immutable; containers need a name and an
//!   image; a Service's ports, names and target ports are checked and its
//!   `clusterIP` is immutable; ConfigMap and Secret keys, immutable
//!   ConfigMaps and Secret types; HPA bounds; Lease durations; Event
//!   fields; RBAC rules need verbs and API groups, a binding's `roleRef` is
//!   immutable.
//!
//! A failing object is a 422 `Invalid` with one cause per problem.

use serde_json::{Value, json};

use super::schema::Node;

/// One problem: `reason` is the API's cause reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    fn required(field: &str) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.to_string(),
            message: "Required value".into(),
        }
    }

    fn required_because(field: &str, detail: &str) -> Self {
        Self {
            message: format!("Required value: {detail}"),
            ..Self::required(field)
        }
    }

    fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }

    fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.to_string(),
            message: format!("Forbidden: {detail}"),
        }
    }

    fn duplicate(field: &str, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.to_string(),
            message: format!("Duplicate value: {value}"),
        }
    }

    fn not_supported(field: &str, value: &Value, allowed: &[&str]) -> Self {
        Self {
            reason: "FieldValueNotSupported",
            field: field.to_string(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                allowed
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn too_long(field: &str, max: usize) -> Self {
        Self {
            reason: "FieldValueTooLong",
            field: field.to_string(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }
}

// === name and label formats ===

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1035_LABEL: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const CONFIG_KEY: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// `prefix/name` with an optional DNS-subdomain prefix: label and
/// annotation keys, finalizers, reporting controllers.
fn qualified_name_problem(s: &str) -> Option<String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Some(format!("prefix part {DNS1123_SUBDOMAIN}"));
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    (!ok).then(|| QUALIFIED_NAME.to_string())
}

/// IANA_SVC_NAME: at most 15 characters, lower case letters, digits and
/// '-', at least one letter, no '--', not starting or ending with '-'.
fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

// === decoding ===

/// A decoding problem: the wrong JSON type (always an error) or an
/// unknown field (an error only under strict field validation).
#[derive(Clone, Debug, PartialEq)]
pub enum DecodeProblem {
    WrongType {
        path: String,
        expected: String,
        found: &'static str,
    },
    UnknownField(String),
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "number",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Walks `value` against its schema; with `drop_unknown`, unknown fields
/// are removed (the server's default, "Warn").
pub fn decode(
    value: &mut Value,
    node: Node<'_>,
    path: &str,
    drop_unknown: bool,
    out: &mut Vec<DecodeProblem>,
) {
    let types = node.accepted_types();
    if !types.is_empty() && !value.is_null() {
        let t = json_type(value);
        let ok = types.iter().any(|want| match (*want, &*value) {
            ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
            ("number", Value::Number(_)) => true,
            ("string", Value::String(_)) => true,
            ("boolean", Value::Bool(_)) => true,
            ("array", Value::Array(_)) => true,
            ("object", Value::Object(_)) => true,
            _ => false,
        });
        if !ok {
            out.push(DecodeProblem::WrongType {
                path: path.to_string(),
                expected: types
                    .iter()
                    .filter(|t| **t != "null")
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" or "),
                found: t,
            });
            return;
        }
    }
    match value {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match node.field(&k) {
                    Some(child) => decode(
                        m.get_mut(&k).expect("key"),
                        child,
                        &child_path,
                        drop_unknown,
                        out,
                    ),
                    None if node.allows_unknown_fields() => {}
                    None => {
                        out.push(DecodeProblem::UnknownField(child_path));
                        if drop_unknown {
                            m.remove(&k);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.items() {
                for (i, v) in items.iter_mut().enumerate() {
                    decode(v, item, &format!("{path}[{i}]"), drop_unknown, out);
                }
            }
        }
        _ => {}
    }
}

// === metadata ===

/// Which name format a kind's names follow.
#[derive(Clone, Copy)]
enum NameRule {
    Subdomain,
    Dns1035,
    Dns1123Label,
    PathSegment,
}

fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Service" => NameRule::Dns1035,
        "Namespace" => NameRule::Dns1123Label,
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn validate_name(kind: &str, name: &str, field: &str, out: &mut Vec<Cause>) {
    let v = json!(name);
    match name_rule(kind) {
        NameRule::Subdomain => {
            if name.len() > 253 {
                out.push(Cause::invalid(
                    field,
                    &v,
                    "must be no more than 253 characters",
                ));
            } else if !is_dns1123_subdomain(name) {
                out.push(Cause::invalid(field, &v, DNS1123_SUBDOMAIN));
            }
        }
        NameRule::Dns1035 => {
            if name.len() > 63 {
                out.push(Cause::invalid(
                    field,
                    &v,
                    "must be no more than 63 characters",
                ));
            } else if !is_dns1035_label(name) {
                out.push(Cause::invalid(field, &v, DNS1035_LABEL));
            }
        }
        NameRule::Dns1123Label => {
            if name.len() > 63 {
                out.push(Cause::invalid(
                    field,
                    &v,
                    "must be no more than 63 characters",
                ));
            } else if !is_dns1123_label(name) {
                out.push(Cause::invalid(field, &v, DNS1123_LABEL));
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." || name.contains('/') || name.contains('%') {
                out.push(Cause::invalid(
                    field,
                    &v,
                    "may not contain '/' or '%', and may not be '.' or '..'",
                ));
            }
        }
    }
}

fn validate_labels(labels: &Value, field: &str, out: &mut Vec<Cause>) {
    let Some(m) = labels.as_object() else { return };
    for (k, v) in m {
        if let Some(p) = qualified_name_problem(k) {
            out.push(Cause::invalid(field, &json!(k), &p));
        }
        let value = v.as_str().unwrap_or_default();
        if value.len() > 63 {
            out.push(Cause::invalid(
                field,
                v,
                "must be no more than 63 characters",
            ));
        } else if !is_label_value(value) {
            out.push(Cause::invalid(field, v, LABEL_VALUE));
        }
    }
}

fn validate_metadata(kind: &str, object: &Value, out: &mut Vec<Cause>) {
    let meta = &object["metadata"];
    match meta["name"].as_str() {
        Some(name) if !name.is_empty() => validate_name(kind, name, "metadata.name", out),
        _ if meta["generateName"].is_string() => {}
        _ => out.push(Cause::required("metadata.name")),
    }
    validate_labels(&meta["labels"], "metadata.labels", out);
    if let Some(a) = meta["annotations"].as_object() {
        let mut size = 0;
        for (k, v) in a {
            if let Some(p) = qualified_name_problem(k) {
                out.push(Cause::invalid("metadata.annotations", &json!(k), &p));
            }
            size += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if size > 262_144 {
            out.push(Cause::too_long("metadata.annotations", 262_144));
        }
    }
    if let Some(refs) = meta["ownerReferences"].as_array() {
        let mut controllers = 0;
        for (i, r) in refs.iter().enumerate() {
            for f in ["apiVersion", "kind", "name", "uid"] {
                if r[f].as_str().is_none_or(str::is_empty) {
                    out.push(Cause::required(&format!(
                        "metadata.ownerReferences[{i}].{f}"
                    )));
                }
            }
            if r["controller"] == true {
                controllers += 1;
            }
        }
        if controllers > 1 {
            out.push(Cause::invalid(
                "metadata.ownerReferences",
                &meta["ownerReferences"],
                "Only one reference can have Controller set to true.",
            ));
        }
    }
    if let Some(fs) = meta["finalizers"].as_array() {
        for (i, f) in fs.iter().enumerate() {
            let name = f.as_str().unwrap_or_default();
            if let Some(p) = qualified_name_problem(name) {
                out.push(Cause::invalid(&format!("metadata.finalizers[{i}]"), f, &p));
            }
        }
    }
}

fn immutable(field: &str, new: &Value, old: &Value, out: &mut Vec<Cause>) {
    if new != old {
        out.push(Cause::invalid(field, new, "field is immutable"));
    }
}

// === kinds ===

/// Every problem with `object` (a create when `old` is None).
pub fn validate(kind: &str, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_metadata(kind, object, &mut out);
    match kind {
        "Deployment" => deployment(object, old, &mut out),
        "Service" => service(object, old, &mut out),
        "ConfigMap" | "Secret" => config(kind, object, old, &mut out),
        "HorizontalPodAutoscaler" => hpa(object, &mut out),
        "PodDisruptionBudget" => pdb(object, &mut out),
        "Lease" => lease(object, &mut out),
        // The events.k8s.io/v1 rules; a core/v1 Event may be the legacy
        // shape (no eventTime or reporter), as the real server allows.
        "Event" if object["apiVersion"] == "events.k8s.io/v1" => event(object, &mut out),
        "Event" => legacy_event(object, &mut out),
        "Role" | "ClusterRole" => role(object, &mut out),
        "RoleBinding" | "ClusterRoleBinding" => binding(kind, object, old, &mut out),
        _ => {}
    }
    out
}

fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let has = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| has(k) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => has(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => has(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => has(key).is_some(),
                Some("DoesNotExist") => has(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

/// Whether a label selector selects these labels (also for controllers).
pub fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    selector_matches(selector, labels)
}

fn containers(spec: &Value, field: &str, out: &mut Vec<Cause>) {
    let list = spec["containers"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out.push(Cause::required(&format!("{field}.containers")));
    }
    let mut names = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let f = format!("{field}.containers[{i}]");
        match c["name"].as_str() {
            None | Some("") => out.push(Cause::required(&format!("{f}.name"))),
            Some(n) => {
                if !is_dns1123_label(n) {
                    out.push(Cause::invalid(
                        &format!("{f}.name"),
                        &c["name"],
                        DNS1123_LABEL,
                    ));
                }
                if names.contains(&n) {
                    out.push(Cause::duplicate(&format!("{f}.name"), &c["name"]));
                }
                names.push(n);
            }
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            out.push(Cause::required(&format!("{f}.image")));
        }
        for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
            let port = p["containerPort"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                out.push(Cause::invalid(
                    &format!("{f}.ports[{j}].containerPort"),
                    &p["containerPort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

/// An int-or-percent's value as written (a percent's number), or None
/// when it is neither.
fn int_or_percent(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.strip_suffix('%').and_then(|n| n.parse().ok()),
        _ => None,
    }
}

/// `spec.strategy`, as ValidateDeploymentStrategy: RollingUpdate's
/// maxSurge and maxUnavailable are non-negative ints or percents (at most
/// 100% unavailable) and not both zero; Recreate takes no rollingUpdate.
fn deployment_strategy(strategy: &Value, out: &mut Vec<Cause>) {
    let kind = strategy["type"].as_str().unwrap_or("RollingUpdate");
    let rolling = &strategy["rollingUpdate"];
    match kind {
        "Recreate" => {
            if !rolling.is_null() {
                out.push(Cause::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => {
            let mut values = Vec::new();
            for field in ["maxUnavailable", "maxSurge"] {
                let v = &rolling[field];
                if v.is_null() {
                    values.push(None);
                    continue;
                }
                let path = format!("spec.strategy.rollingUpdate.{field}");
                match int_or_percent(v) {
                    None => out.push(Cause::invalid(
                        &path,
                        v,
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    )),
                    Some(n) if n < 0 => {
                        out.push(Cause::invalid(&path, v, "must be greater than or equal to 0"))
                    }
                    Some(n) if field == "maxUnavailable" && v.is_string() && n > 100 => {
                        out.push(Cause::invalid(&path, v, "must not be greater than 100%"))
                    }
                    Some(_) => {}
                }
                values.push(int_or_percent(v));
            }
            if values == [Some(0), Some(0)] {
                out.push(Cause::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    &rolling["maxUnavailable"],
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        _ => out.push(Cause::not_supported(
            "spec.strategy.type",
            &strategy["type"],
            &["Recreate", "RollingUpdate"],
        )),
    }
}

fn deployment(d: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let spec = &d["spec"];
    deployment_strategy(&spec["strategy"], out);
    let selector = &spec["selector"];
    let empty_selector = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(|a| a.is_empty());
    if selector.is_null() {
        out.push(Cause::required("spec.selector"));
    } else if empty_selector {
        out.push(Cause::invalid(
            "spec.selector",
            selector,
            "empty selector is invalid for deployment",
        ));
    } else {
        validate_labels(&selector["matchLabels"], "spec.selector.matchLabels", out);
        let labels = &spec["template"]["metadata"]["labels"];
        if !selector_matches(selector, labels) {
            out.push(Cause::invalid(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            ));
        }
    }
    validate_labels(
        &spec["template"]["metadata"]["labels"],
        "spec.template.metadata.labels",
        out,
    );
    if let Some(r) = spec["replicas"].as_i64()
        && r < 0
    {
        out.push(Cause::invalid(
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        ));
    }
    containers(&spec["template"]["spec"], "spec.template.spec", out);
    if let Some(old) = old {
        immutable("spec.selector", selector, &old["spec"]["selector"], out);
    }
}

fn service(s: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let spec = &s["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&ty) {
        out.push(Cause::not_supported("spec.type", &spec["type"], &types));
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && spec["clusterIP"] != "None" {
        out.push(Cause::required("spec.ports"));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        match p["name"].as_str() {
            None | Some("") if ports.len() > 1 => out.push(Cause::required(&format!("{f}.name"))),
            None | Some("") => {}
            Some(n) => {
                // A port name is a DNS-1123 label (`80-8080`, as `kubectl
                // create service` names them), not a DNS-1035 one.
                if !is_dns1123_label(n) {
                    out.push(Cause::invalid(
                        &format!("{f}.name"),
                        &p["name"],
                        DNS1123_LABEL,
                    ));
                }
                if names.contains(&n) {
                    out.push(Cause::duplicate(&format!("{f}.name"), &p["name"]));
                }
                names.push(n);
            }
        }
        let port = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            out.push(Cause::invalid(
                &format!("{f}.port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            ));
        }
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            out.push(Cause::not_supported(
                &format!("{f}.protocol"),
                &p["protocol"],
                &["SCTP", "TCP", "UDP"],
            ));
        }
        match &p["targetPort"] {
            Value::Number(n) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                out.push(Cause::invalid(
                    &format!("{f}.targetPort"),
                    &p["targetPort"],
                    "must be between 1 and 65535, inclusive",
                ))
            }
            Value::String(name) if !is_iana_svc_name(name) => out.push(Cause::invalid(
                &format!("{f}.targetPort"),
                &p["targetPort"],
                "must contain only lowercase alphanumeric characters or '-', at most 15 characters, at least one letter, and not start or end with '-' or contain '--'",
            )),
            _ => {}
        }
        if p.get("nodePort").is_some_and(|v| !v.is_null())
            && !["NodePort", "LoadBalancer"].contains(&ty)
        {
            out.push(Cause::forbidden(
                &format!("{f}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    validate_labels(&spec["selector"], "spec.selector", out);
    if let Some(old) = old {
        let before = &old["spec"]["clusterIP"];
        let after = &spec["clusterIP"];
        if !before.is_null() && !after.is_null() && after != "" && before != after {
            immutable("spec.clusterIP", after, before, out);
        }
    }
}

fn config(kind: &str, c: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let mut keys = Vec::new();
    for field in ["data", "binaryData"] {
        for k in c[field].as_object().into_iter().flatten().map(|(k, _)| k) {
            if !is_config_key(k) {
                out.push(Cause::invalid(
                    &format!("{field}[{k}]"),
                    &json!(k),
                    CONFIG_KEY,
                ));
            }
            if kind == "ConfigMap" && keys.contains(k) {
                out.push(Cause::invalid(
                    &format!("data[{k}]"),
                    &json!(k),
                    "duplicate of key present in binaryData",
                ));
            }
            keys.push(k.clone());
        }
    }
    if let Some(old) = old {
        if old["immutable"] == true {
            if c["immutable"] != true {
                out.push(Cause::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
            for field in ["data", "binaryData"] {
                if c[field] != old[field] {
                    out.push(Cause::forbidden(
                        field,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        if kind == "Secret" {
            let t = |v: &Value| v["type"].as_str().unwrap_or("Opaque").to_string();
            if t(c) != t(old) {
                immutable("type", &json!(t(c)), &json!(t(old)), out);
            }
        }
    }
}

fn hpa(h: &Value, out: &mut Vec<Cause>) {
    let spec = &h["spec"];
    for f in ["kind", "name"] {
        if spec["scaleTargetRef"][f].as_str().is_none_or(str::is_empty) {
            out.push(Cause::required(&format!("spec.scaleTargetRef.{f}")));
        }
    }
    let max = spec["maxReplicas"].as_i64().unwrap_or(0);
    if max < 1 {
        out.push(Cause::invalid(
            "spec.maxReplicas",
            &spec["maxReplicas"],
            "must be greater than or equal to 1",
        ));
    }
    if let Some(min) = spec["minReplicas"].as_i64() {
        if min < 1 {
            out.push(Cause::invalid(
                "spec.minReplicas",
                &spec["minReplicas"],
                "must be greater than or equal to 1",
            ));
        }
        if min > max && max >= 1 {
            out.push(Cause::invalid(
                "spec.maxReplicas",
                &spec["maxReplicas"],
                "must be greater than or equal to `minReplicas`",
            ));
        }
    }
}

fn lease(l: &Value, out: &mut Vec<Cause>) {
    if let Some(d) = l["spec"]["leaseDurationSeconds"].as_i64()
        && d <= 0
    {
        out.push(Cause::invalid(
            "spec.leaseDurationSeconds",
            &l["spec"]["leaseDurationSeconds"],
            "must be greater than 0",
        ));
    }
}

/// A core/v1 Event: the involved object's namespace is the Event's.
fn legacy_event(e: &Value, out: &mut Vec<Cause>) {
    let ns = e["metadata"]["namespace"].as_str().unwrap_or_default();
    if let Some(involved) = e["involvedObject"]["namespace"].as_str()
        && !involved.is_empty()
        && !ns.is_empty()
        && involved != ns
    {
        out.push(Cause::invalid(
            "involvedObject.namespace",
            &e["involvedObject"]["namespace"],
            "does not match event.namespace",
        ));
    }
    if let Some(t) = e["type"].as_str()
        && !t.is_empty()
        && !["Normal", "Warning"].contains(&t)
    {
        out.push(Cause::not_supported(
            "type",
            &e["type"],
            &["Normal", "Warning"],
        ));
    }
}

fn event(e: &Value, out: &mut Vec<Cause>) {
    if e["eventTime"].is_null() {
        out.push(Cause::required("eventTime"));
    }
    for (f, max) in [
        ("reportingController", 253),
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
    ] {
        match e[f].as_str() {
            None | Some("") => out.push(Cause::required(f)),
            Some(v) if v.len() > max => out.push(Cause::too_long(f, max)),
            _ => {}
        }
    }
    if let Some(t) = e["type"].as_str()
        && !["Normal", "Warning"].contains(&t)
    {
        out.push(Cause::not_supported(
            "type",
            &e["type"],
            &["Normal", "Warning"],
        ));
    }
    if e["note"].as_str().is_some_and(|n| n.len() > 1024) {
        out.push(Cause::too_long("note", 1024));
    }
    if e["regarding"].is_null() {
        out.push(Cause::required("regarding"));
    }
}

/// A PodDisruptionBudget sets exactly one of minAvailable and
/// maxUnavailable, each a non-negative count or a percentage.
fn pdb(p: &Value, out: &mut Vec<Cause>) {
    let spec = &p["spec"];
    let set: Vec<&str> = ["minAvailable", "maxUnavailable"]
        .into_iter()
        .filter(|k| !spec[*k].is_null())
        .collect();
    if set.len() == 2 {
        out.push(Cause::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for k in set {
        let v = &spec[k];
        let ok = match v {
            Value::Number(n) => n.as_i64().is_some_and(|n| n >= 0),
            Value::String(s) => s
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n <= 100),
            _ => false,
        };
        if !ok {
            out.push(Cause::invalid(
                &format!("spec.{k}"),
                v,
                "must be a non-negative integer or a percentage from 0% to 100%",
            ));
        }
    }
}

fn role(r: &Value, out: &mut Vec<Cause>) {
    for (i, rule) in r["rules"].as_array().into_iter().flatten().enumerate() {
        let f = format!("rules[{i}]");
        if rule["verbs"].as_array().is_none_or(|v| v.is_empty()) {
            out.push(Cause::required_because(
                &format!("{f}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let non_resource = rule["nonResourceURLs"]
            .as_array()
            .is_some_and(|v| !v.is_empty());
        if !non_resource {
            if rule["apiGroups"].as_array().is_none_or(|v| v.is_empty()) {
                out.push(Cause::required_because(
                    &format!("{f}.apiGroups"),
                    "resource rules must supply at least one api group",
                ));
            }
            if rule["resources"].as_array().is_none_or(|v| v.is_empty()) {
                out.push(Cause::required_because(
                    &format!("{f}.resources"),
                    "resource rules must supply at least one resource",
                ));
            }
        }
    }
}

fn binding(kind: &str, b: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let role_ref = &b["roleRef"];
    if role_ref["apiGroup"] != "rbac.authorization.k8s.io" {
        out.push(Cause::not_supported(
            "roleRef.apiGroup",
            &role_ref["apiGroup"],
            &["rbac.authorization.k8s.io"],
        ));
    }
    let allowed: &[&str] = if kind == "RoleBinding" {
        &["ClusterRole", "Role"]
    } else {
        &["ClusterRole"]
    };
    if !role_ref["kind"]
        .as_str()
        .is_some_and(|k| allowed.contains(&k))
    {
        out.push(Cause::not_supported(
            "roleRef.kind",
            &role_ref["kind"],
            allowed,
        ));
    }
    if role_ref["name"].as_str().is_none_or(str::is_empty) {
        out.push(Cause::required("roleRef.name"));
    }
    for (i, s) in b["subjects"].as_array().into_iter().flatten().enumerate() {
        let f = format!("subjects[{i}]");
        match s["kind"].as_str() {
            Some("ServiceAccount") => {
                if s["name"].as_str().is_none_or(|n| !is_dns1123_subdomain(n)) {
                    out.push(Cause::invalid(
                        &format!("{f}.name"),
                        &s["name"],
                        DNS1123_SUBDOMAIN,
                    ));
                }
                if kind == "ClusterRoleBinding" && s["namespace"].as_str().is_none_or(str::is_empty)
                {
                    out.push(Cause::required(&format!("{f}.namespace")));
                }
            }
            Some("User") | Some("Group") => {
                if s["name"].as_str().is_none_or(str::is_empty) {
                    out.push(Cause::required(&format!("{f}.name")));
                }
            }
            _ => out.push(Cause::not_supported(
                &format!("{f}.kind"),
                &s["kind"],
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    if let Some(old) = old
        && old["roleRef"] != *role_ref
    {
        out.push(Cause::invalid("roleRef", role_ref, "cannot change roleRef"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_follow_the_formats() {
        assert!(is_dns1123_subdomain("app-primary.v1"));
        assert!(!is_dns1123_subdomain("App"));
        assert!(is_dns1035_label("app-canary"));
        assert!(!is_dns1035_label("1app"));
        assert!(!is_dns1035_label(&"a".repeat(64)));
        assert!(is_label_value("a.b_c-1"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(qualified_name_problem("sluice.dev/release").is_none());
        assert!(qualified_name_problem("bad/prefix/x").is_some());
        assert!(is_iana_svc_name("http-alt"));
        assert!(!is_iana_svc_name("8080"));
    }

    #[test]
    fn a_deployment_selector_must_match_and_stays_put() {
        let d = json!({"metadata": {"name": "app"}, "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "y"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = validate("Deployment", &d, None);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        let mut ok = d.clone();
        ok["spec"]["template"]["metadata"]["labels"]["app"] = json!("x");
        assert!(validate("Deployment", &ok, None).is_empty());
        let mut moved = ok.clone();
        moved["spec"]["selector"]["matchLabels"]["app"] = json!("z");
        moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("z");
        let causes = validate("Deployment", &moved, Some(&ok));
        assert_eq!(causes[0].field, "spec.selector");
        assert!(causes[0].message.ends_with("field is immutable"));
    }
}
