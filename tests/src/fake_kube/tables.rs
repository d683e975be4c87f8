//! Server-side printing: `meta.k8s.io` Tables, as `kubectl get` asks for
//! them (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io, …,
//! application/json`).
//!
//! What it models, as the real API server does:
//!
//! - The first media type of `Accept` the server can give wins: a Table in
//!   `meta.k8s.io/v1` (or `v1beta1`), else the plain object or list. An
//!   `Accept` naming only Tables of versions the server lacks is a 406.
//! - Every column of the kind's printer is sent, the `-o wide` ones with
//!   `priority: 1`; kubectl hides those unless `-o wide` (the server's
//!   printers always generate the wide cells).
//! - Ages (`AGE`, `LAST SEEN`) are computed by the server when it answers,
//!   as strings in the API machinery's short form (`45s`, `3m12s`, `5h`,
//!   `12d`), exactly as a real server's printers do; kubectl prints them
//!   as sent. Kinds without a printer get the default table: `Name` and
//!   `Created At` (an RFC 3339 `date` cell), as a real server gives for
//!   kinds it has no printer for (e.g. `kubectl get leases` here, CRDs
//!   there).
//! - Each row carries the object per `includeObject`: `Metadata` (the
//!   default) a `PartialObjectMetadata`, `Object` the whole object as that
//!   version serves it, `None` nothing; another value is a 400.
//! - A watch with `as=Table` sends each event's object as a one-row Table;
//!   only the first carries the column definitions (as a real server
//!   does: kubectl keeps the header it has).

use serde_json::{Value, json};

use super::KindInfo;

/// What the row carries of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// A request for a Table.
#[derive(Clone, Copy, Debug)]
pub struct TableRequest {
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
    pub api_version: &'static str,
    pub include: Include,
}

/// Reads `Accept` and `includeObject`: `Ok(None)` for the plain form,
/// `Err((406 or 400, message))` for what the server cannot give.
pub fn requested(
    accept: Option<&str>,
    include_object: Option<&str>,
) -> Result<Option<TableRequest>, (u16, String)> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(None);
    };
    let mut wanted_other_table = false;
    let mut plain = false;
    let mut version = None;
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let json_like = matches!(kind.as_str(), "application/json" | "application/*" | "*/*");
        match param("as") {
            None if json_like || kind == "application/yaml" => {
                plain = true;
                break;
            }
            // Protobuf and other forms the fake does not speak: the next.
            None => continue,
            Some("Table")
                if json_like
                    && param("g") == Some("meta.k8s.io")
                    && matches!(param("v"), Some("v1") | Some("v1beta1")) =>
            {
                version = Some(if param("v") == Some("v1") {
                    "meta.k8s.io/v1"
                } else {
                    "meta.k8s.io/v1beta1"
                });
                break;
            }
            Some(_) => wanted_other_table = true,
        }
    }
    let include = match include_object {
        None | Some("") | Some("Metadata") => Include::Metadata,
        Some("Object") => Include::Object,
        Some("None") => Include::None,
        Some(other) => {
            return Err((
                400,
                format!(
                    "includeObject: Unsupported value: \"{other}\": supported values: \"None\", \"Metadata\", \"Object\""
                ),
            ));
        }
    };
    match version {
        Some(api_version) => Ok(Some(TableRequest {
            api_version,
            include,
        })),
        None if wanted_other_table && !plain => Err((
            406,
            format!(
                "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1beta1;g=meta.k8s.io (asked: {accept})"
            ),
        )),
        None => Ok(None),
    }
}

/// A Table of `objects`: each `(stored, served)`, the stored form printed,
/// the served one (the version asked through) carried per `includeObject`.
pub fn table(
    info: &KindInfo,
    objects: &[(Value, Value)],
    list_metadata: Value,
    request: TableRequest,
    with_columns: bool,
) -> Value {
    let columns = if with_columns {
        columns(info)
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|(stored, served)| {
            let mut row = json!({"cells": cells(info, stored)});
            match request.include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": request.api_version,
                        "metadata": served["metadata"],
                    });
                }
                Include::Object => row["object"] = served.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": request.api_version,
        "metadata": list_metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// A watch event's object as a one-row Table (the column definitions in
/// the first only).
pub fn watch_row(info: &KindInfo, served: Value, request: TableRequest, first: bool) -> Value {
    let stored = if super::events::is_events_view(&info.prefix(), info.plural) {
        super::events::to_core(&served)
    } else {
        served.clone()
    };
    let rv = served["metadata"]["resourceVersion"].clone();
    table(
        info,
        &[(stored, served)],
        json!({"resourceVersion": rv}),
        request,
        first,
    )
}

fn column(name: &str, kind: &str, format: &str, priority: i32, description: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.";

fn name_column() -> Value {
    column("Name", "string", "name", 0, NAME_DOC)
}

fn age_column() -> Value {
    column("Age", "string", "", 0, AGE_DOC)
}

/// The column definitions of a kind's printer.
pub fn columns(info: &KindInfo) -> Vec<Value> {
    if let Some(c) = info.crd {
        return super::crd::columns(c);
    }
    let s = |name: &str, priority: i32, doc: &str| column(name, "string", "", priority, doc);
    let i = |name: &str, doc: &str| column(name, "integer", "", 0, doc);
    match (info.group, info.plural) {
        ("", "events") | ("events.k8s.io", "events") => vec![
            s(
                "Last Seen",
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            s(
                "Type",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            s(
                "Reason",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            s("Object", 0, "The object that this event is about."),
            s(
                "Subobject",
                1,
                "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
            ),
            s(
                "Source",
                1,
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            s(
                "Message",
                0,
                "A human-readable description of the status of this operation.",
            ),
            s(
                "First Seen",
                1,
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            ),
            s("Count", 1, "The number of times this event has occurred."),
            column("Name", "string", "name", 1, NAME_DOC),
        ],
        ("apps", "deployments") => vec![
            name_column(),
            s("Ready", 0, "Number of the pod with ready state"),
            i(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            i(
                "Available",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age_column(),
            s("Containers", 1, "Names of each container in the template."),
            s(
                "Images",
                1,
                "Images referenced by each container in the template.",
            ),
            s(
                "Selector",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        ("apps", "replicasets") => vec![
            name_column(),
            i("Desired", "Replicas is the number of desired pods."),
            i(
                "Current",
                "Replicas is the most recently observed number of non-terminating pods.",
            ),
            i(
                "Ready",
                "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
            ),
            age_column(),
            s("Containers", 1, "Names of each container in the template."),
            s(
                "Images",
                1,
                "Images referenced by each container in the template.",
            ),
            s(
                "Selector",
                1,
                "Selector is a label query over pods that should match the replica count.",
            ),
        ],
        ("", "pods") => vec![
            name_column(),
            s(
                "Ready",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            s(
                "Status",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            s(
                "Restarts",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age_column(),
            s(
                "IP",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            s(
                "Node",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            s(
                "Nominated Node",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            s(
                "Readiness Gates",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("", "services") => vec![
            name_column(),
            s("Type", 0, "type determines how the Service is exposed."),
            s(
                "Cluster-IP",
                0,
                "clusterIP is the IP address of the service.",
            ),
            s(
                "External-IP",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            s(
                "Port(s)",
                0,
                "The list of ports that are exposed by this service.",
            ),
            age_column(),
            s(
                "Selector",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        ("discovery.k8s.io", "endpointslices") => vec![
            name_column(),
            s(
                "AddressType",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            s(
                "Ports",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            s(
                "Endpoints",
                0,
                "endpoints is a list of unique endpoints in this slice.",
            ),
            age_column(),
        ],
        ("", "configmaps") => vec![
            name_column(),
            i("Data", "The number of entries in data and binaryData."),
            age_column(),
        ],
        ("", "secrets") => vec![
            name_column(),
            s(
                "Type",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ),
            i("Data", "The number of entries in data."),
            age_column(),
        ],
        ("autoscaling", "horizontalpodautoscalers") => vec![
            name_column(),
            s(
                "Reference",
                0,
                "scaleTargetRef points to the target resource to scale.",
            ),
            s(
                "Targets",
                0,
                "metrics contains the specifications for which to use to calculate the desired replica count.",
            ),
            s(
                "MinPods",
                0,
                "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.",
            ),
            i(
                "MaxPods",
                "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up.",
            ),
            i(
                "Replicas",
                "currentReplicas is current number of replicas of pods managed by this autoscaler.",
            ),
            age_column(),
        ],
        ("", "namespaces") => vec![
            name_column(),
            s("Status", 0, "The status of the namespace"),
            age_column(),
        ],
        ("", "serviceaccounts") => vec![
            name_column(),
            i(
                "Secrets",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            age_column(),
        ],
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => {
            vec![name_column(), s("Created At", 0, AGE_DOC)]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => vec![
            name_column(),
            s(
                "Role",
                0,
                "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
            ),
            age_column(),
            s("Users", 1, "Users in the binding"),
            s("Groups", 1, "Groups in the binding"),
            s("ServiceAccounts", 1, "ServiceAccounts in the binding"),
        ],
        ("admissionregistration.k8s.io", "validatingadmissionpolicies") => vec![
            name_column(),
            i(
                "Validations",
                "Validations is a list of the CEL expressions the policy checks.",
            ),
            s(
                "ParamKind",
                0,
                "ParamKind specifies the kind of resources used to parameterize this policy",
            ),
            age_column(),
        ],
        ("admissionregistration.k8s.io", "validatingadmissionpolicybindings") => vec![
            name_column(),
            s(
                "PolicyName",
                0,
                "PolicyName references a ValidatingAdmissionPolicy name which the ValidatingAdmissionPolicyBinding binds to.",
            ),
            s(
                "ParamRef",
                0,
                "ParamRef specifies the parameter resource used to configure the admission control policy.",
            ),
            age_column(),
        ],
        _ => vec![name_column(), column("Created At", "date", "", 0, AGE_DOC)],
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn age(o: &Value) -> String {
    since(&o["metadata"]["creationTimestamp"])
}

/// `translateTimestampSince`: `<unknown>` for no time.
fn since(t: &Value) -> String {
    match t.as_str().and_then(parse_rfc3339) {
        Some(at) => human_duration(now_seconds() - at),
        None => "<unknown>".into(),
    }
}

fn containers_images(template_spec: &Value) -> (String, String) {
    let cs = array(&template_spec["containers"]);
    (
        cs.iter()
            .map(|c| text(&c["name"]))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| text(&c["image"]))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// A label selector as `kubectl` prints one (`a=b,c in (d)`), `<none>`
/// when it selects nothing special.
fn selector_text(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    for e in array(&selector["matchExpressions"]) {
        let key = text(&e["key"]);
        let values: Vec<String> = array(&e["values"]).iter().map(text).collect();
        parts.push(match text(&e["operator"]).as_str() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    or_none(parts.join(","))
}

/// A map of labels as `labels.FormatLabels` prints it.
fn labels_text(labels: &Value) -> String {
    or_none(
        labels
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Up to three items, then ` + N more...`; `<unset>` for none.
fn list_with_more(items: Vec<String>) -> String {
    const MAX: usize = 3;
    let shown = items
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if items.len() > MAX {
        format!("{shown} + {} more...", items.len() - MAX)
    } else if shown.is_empty() {
        "<unset>".into()
    } else {
        shown
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The cells of one object's row (every column, the wide ones included).
pub fn cells(info: &KindInfo, o: &Value) -> Vec<Value> {
    if let Some(c) = info.crd {
        return super::crd::cells(c, o);
    }
    let name = json!(o["metadata"]["name"]);
    let spec = &o["spec"];
    let status = &o["status"];
    match (info.group, info.plural) {
        ("", "events") | ("events.k8s.io", "events") => event_cells(o),
        ("apps", "deployments") => {
            let (containers, images) = containers_images(&spec["template"]["spec"]);
            let desired = spec["replicas"].as_i64().unwrap_or(1);
            vec![
                name,
                json!(format!("{}/{desired}", int(&status["readyReplicas"]))),
                json!(int(&status["updatedReplicas"])),
                json!(int(&status["availableReplicas"])),
                json!(age(o)),
                json!(containers),
                json!(images),
                json!(selector_text(&spec["selector"])),
            ]
        }
        ("apps", "replicasets") => {
            let (containers, images) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(spec["replicas"].as_i64().unwrap_or(1)),
                json!(int(&status["replicas"])),
                json!(int(&status["readyReplicas"])),
                json!(age(o)),
                json!(containers),
                json!(images),
                json!(selector_text(&spec["selector"])),
            ]
        }
        ("", "pods") => pod_cells(o),
        ("", "services") => service_cells(o),
        ("discovery.k8s.io", "endpointslices") => {
            let ports = array(&o["ports"])
                .iter()
                .map(|p| match (&p["port"], &p["name"]) {
                    (Value::Number(n), _) => n.to_string(),
                    (_, Value::String(n)) if !n.is_empty() => n.clone(),
                    _ => "*".into(),
                })
                .collect();
            let addresses = array(&o["endpoints"])
                .iter()
                .flat_map(|e| array(&e["addresses"]).iter().map(text))
                .filter(|a| !a.is_empty())
                .collect();
            vec![
                name,
                json!(text(&o["addressType"])),
                json!(list_with_more(ports)),
                json!(list_with_more(addresses)),
                json!(age(o)),
            ]
        }
        ("", "configmaps") => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), json!(age(o))]
        }
        ("", "secrets") => {
            let n = o["data"].as_object().map_or(0, |m| m.len());
            vec![name, json!(text(&o["type"])), json!(n), json!(age(o))]
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            let target = &spec["scaleTargetRef"];
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    text(&target["kind"]),
                    text(&target["name"])
                )),
                json!(hpa_targets(o)),
                json!(
                    spec["minReplicas"]
                        .as_i64()
                        .map_or("<unset>".to_string(), |m| m.to_string())
                ),
                json!(int(&spec["maxReplicas"])),
                json!(int(&status["currentReplicas"])),
                json!(age(o)),
            ]
        }
        ("", "namespaces") => vec![
            name,
            json!(status["phase"].as_str().unwrap_or("Active")),
            json!(age(o)),
        ],
        ("", "serviceaccounts") => vec![name, json!(array(&o["secrets"]).len()), json!(age(o))],
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => {
            vec![name, json!(text(&o["metadata"]["creationTimestamp"]))]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let subjects = array(&o["subjects"]);
            let of = |kind: &str| -> String {
                subjects
                    .iter()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| {
                        if kind == "ServiceAccount" {
                            format!("{}/{}", text(&s["namespace"]), text(&s["name"]))
                        } else {
                            text(&s["name"])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    text(&o["roleRef"]["kind"]),
                    text(&o["roleRef"]["name"])
                )),
                json!(age(o)),
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
        ("admissionregistration.k8s.io", "validatingadmissionpolicies") => {
            let param = &spec["paramKind"];
            vec![
                name,
                json!(array(&spec["validations"]).len()),
                json!(if param.is_object() {
                    format!("{}/{}", text(&param["apiVersion"]), text(&param["kind"]))
                } else {
                    "<unset>".into()
                }),
                json!(age(o)),
            ]
        }
        ("admissionregistration.k8s.io", "validatingadmissionpolicybindings") => {
            let param = &spec["paramRef"];
            let param_ref = if param.is_object() {
                let ns = text(&param["namespace"]);
                let n = param["name"].as_str().unwrap_or("*");
                if ns.is_empty() {
                    n.to_string()
                } else {
                    format!("{ns}/{n}")
                }
            } else {
                "<unset>".into()
            };
            vec![
                name,
                json!(text(&spec["policyName"])),
                json!(param_ref),
                json!(age(o)),
            ]
        }
        _ => vec![name, json!(text(&o["metadata"]["creationTimestamp"]))],
    }
}

fn event_cells(o: &Value) -> Vec<Value> {
    let mut first = since(&o["firstTimestamp"]);
    if o["firstTimestamp"].as_str().is_none_or(str::is_empty) {
        first = since(&o["eventTime"]);
    }
    let mut last = if o["lastTimestamp"].as_str().is_none_or(str::is_empty) {
        first.clone()
    } else {
        since(&o["lastTimestamp"])
    };
    let mut count = o["count"].as_i64().unwrap_or(0);
    if o["series"].is_object() {
        last = since(&o["series"]["lastObservedTime"]);
        count = int(&o["series"]["count"]);
    } else if count == 0 {
        count = 1;
    }
    let involved = &o["involvedObject"];
    let kind = text(&involved["kind"]).to_lowercase();
    let target = match involved["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let source = {
        let component = o["source"]["component"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| o["reportingComponent"].as_str())
            .unwrap_or_default();
        let host = o["source"]["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| o["reportingInstance"].as_str())
            .unwrap_or_default();
        if host.is_empty() {
            component.to_string()
        } else {
            format!("{component}, {host}")
        }
    };
    vec![
        json!(last),
        json!(text(&o["type"])),
        json!(text(&o["reason"])),
        json!(target),
        json!(text(&involved["fieldPath"])),
        json!(source),
        json!(text(&o["message"]).trim()),
        json!(first),
        json!(count),
        json!(o["metadata"]["name"]),
    ]
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let spec = &o["spec"];
    let status = &o["status"];
    let total = array(&spec["containers"]).len();
    let statuses = array(&status["containerStatuses"]);
    let mut ready = statuses.iter().filter(|c| c["ready"] == true).count();
    if statuses.is_empty()
        && array(&status["conditions"])
            .iter()
            .any(|c| c["type"] == "ContainersReady" && c["status"] == "True")
    {
        ready = total;
    }
    let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
    let mut reason = status["phase"].as_str().unwrap_or("Pending").to_string();
    if let Some(r) = status["reason"].as_str().filter(|r| !r.is_empty()) {
        reason = r.to_string();
    }
    for c in statuses {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            reason = r.to_string();
        } else if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
            reason = r.to_string();
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        reason = if status["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let gates = array(&spec["readinessGates"]);
    let gates_text = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let met = gates
            .iter()
            .filter(|g| {
                array(&status["conditions"])
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        json!(o["metadata"]["name"]),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(o)),
        json!(or_none(text(&status["podIP"]))),
        json!(or_none(text(&spec["nodeName"]))),
        json!(or_none(text(&status["nominatedNodeName"]))),
        json!(gates_text),
    ]
}

fn service_cells(o: &Value) -> Vec<Value> {
    let spec = &o["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let cluster_ip = match spec["clusterIP"].as_str() {
        None | Some("") => "<none>".to_string(),
        Some(ip) => ip.to_string(),
    };
    let external: Vec<String> = array(&spec["externalIPs"]).iter().map(text).collect();
    let ingress: Vec<String> = array(&o["status"]["loadBalancer"]["ingress"])
        .iter()
        .map(|i| {
            i["ip"]
                .as_str()
                .or(i["hostname"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let external_ip = match kind.as_str() {
        "LoadBalancer" => {
            let all: Vec<String> = ingress.into_iter().chain(external).collect();
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(&spec["externalName"]),
        _ => or_none(external.join(",")),
    };
    let ports: Vec<String> = array(&spec["ports"])
        .iter()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64().filter(|n| *n > 0) {
                Some(node) => format!("{}:{node}/{protocol}", int(&p["port"])),
                None => format!("{}/{protocol}", int(&p["port"])),
            }
        })
        .collect();
    vec![
        json!(o["metadata"]["name"]),
        json!(kind),
        json!(cluster_ip),
        json!(external_ip),
        json!(or_none(ports.join(","))),
        json!(age(o)),
        json!(labels_text(&spec["selector"])),
    ]
}

/// The `TARGETS` of an HPA: `<current>/<target>` per metric (`cpu:
/// <unknown>/80%` before any measurement), `<none>` without metrics.
fn hpa_targets(o: &Value) -> String {
    let current = array(&o["status"]["currentMetrics"]);
    let list: Vec<String> = array(&o["spec"]["metrics"])
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let now = current.get(i);
            match text(&m["type"]).as_str() {
                "Resource" | "ContainerResource" => {
                    let source = if m["type"] == "Resource" {
                        &m["resource"]
                    } else {
                        &m["containerResource"]
                    };
                    let metric = text(&source["name"]);
                    let target = &source["target"];
                    let seen = now
                        .map(|n| {
                            if n["type"] == "Resource" {
                                &n["resource"]["current"]
                            } else {
                                &n["containerResource"]["current"]
                            }
                        })
                        .filter(|c| c.is_object());
                    if let Some(util) = target["averageUtilization"].as_i64() {
                        let cur = seen
                            .and_then(|c| c["averageUtilization"].as_i64())
                            .map_or("<unknown>".to_string(), |c| format!("{c}%"));
                        format!("{metric}: {cur}/{util}%")
                    } else {
                        let cur = seen
                            .and_then(|c| c["averageValue"].as_str())
                            .unwrap_or("<unknown>")
                            .to_string();
                        format!("{metric}: {cur}/{}", text(&target["averageValue"]))
                    }
                }
                other => {
                    let source = &m[lower_first(other)];
                    let target = &source["target"];
                    let want = target["averageValue"]
                        .as_str()
                        .or(target["value"].as_str())
                        .unwrap_or_default();
                    format!("<unknown>/{want}")
                }
            }
        })
        .collect();
    match list.len() {
        0 => "<none>".into(),
        n if n > 2 => format!("{} + {} more...", list[..2].join(", "), n - 2),
        _ => list.join(", "),
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An RFC 3339 time (`2026-01-02T03:04:05Z`, fractions and offsets too) as
/// seconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - offset)
}

/// The API machinery's short human duration (`duration.HumanDuration`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_api_machinery_writes_them() {
        for (s, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (600, "10m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (9 * 3600, "9h"),
            (3 * 86_400 + 2 * 3600, "3d2h"),
            (30 * 86_400, "30d"),
            (3 * 365 * 86_400 + 4 * 86_400, "3y4d"),
        ] {
            assert_eq!(human_duration(s), want, "{s} s");
        }
    }

    #[test]
    fn rfc3339_times_parse_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:01.5Z"), Some(951_868_801));
        assert_eq!(
            parse_rfc3339("2000-03-01T02:00:01+02:00"),
            Some(951_868_801)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
    }

    #[test]
    fn accept_picks_the_first_form_the_server_gives() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let t = requested(Some(kubectl), None).unwrap().unwrap();
        assert_eq!(
            (t.api_version, t.include),
            ("meta.k8s.io/v1", Include::Metadata)
        );
        assert!(requested(Some("application/json"), None).unwrap().is_none());
        assert!(requested(None, None).unwrap().is_none());
        let t = requested(
            Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            Some("Object"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.api_version, t.include),
            ("meta.k8s.io/v1beta1", Include::Object)
        );
        assert_eq!(
            requested(Some("application/json;as=Table;v=v9;g=meta.k8s.io"), None)
                .unwrap_err()
                .0,
            406
        );
        let bad = requested(Some(kubectl), Some("Everything")).unwrap_err();
        assert!(bad.0 == 400 && bad.1.contains("includeObject"), "{bad:?}");
    }
}
