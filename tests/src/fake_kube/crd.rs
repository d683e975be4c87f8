//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`), served as a real
//! API server serves them.
//!
//! - **Creating or updating a CRD** checks it as the real server does,
//!   with its wording: `metadata.name` must be `<plural>.<group>`, `scope`
//!   `Namespaced` or `Cluster`, exactly one version marked `storage`, every
//!   version with a schema, and every schema **structural** (a `type` on
//!   every field and array item and at the root, `object` at the root,
//!   `items` on arrays, no `properties` next to `additionalProperties`,
//!   map lists with their keys, `x-kubernetes-validations` rules that
//!   compile; under `allOf`/`anyOf`/`oneOf`/`not` the opposite: no `type`,
//!   `default`, `description`, `nullable`, `additionalProperties` or
//!   `x-kubernetes-*`, and only fields the structural part declares). A version that was once a storage version (it is in
//!   `status.storedVersions`) cannot be removed from `spec.versions`.
//!   Conversion is `None` only: the fake cannot call a conversion webhook,
//!   so `strategy: Webhook` is refused naming the field. Defaults:
//!   `names.singular` (the lower-case kind), `names.listKind`
//!   (`<Kind>List`), `conversion.strategy: None`. The server writes the
//!   status: `acceptedNames`, `storedVersions` and the conditions
//!   `NamesAccepted` and `Established` (both `True` at once).
//! - **Serving**: each served version is a resource of the fake (discovery
//!   with short names, categories and singular name; the `status` and
//!   `scale` subresources when the version declares them; RBAC; watches;
//!   server-side tables from `additionalPrinterColumns`, else the default
//!   `Age` column; an OpenAPI v3 document per group-version, built from the
//!   schema, so kubectl validates and explains custom resources). Objects
//!   are stored in the storage version and served in the version asked
//!   through (conversion `None`: only `apiVersion` changes).
//! - **Writes** of custom resources: unknown fields are pruned (unless
//!   `x-kubernetes-preserve-unknown-fields`), named in a `Warning` header,
//!   or refused under `fieldValidation=Strict`; `default`s are filled on
//!   create and update and on every read (a null in a non-nullable field
//!   with a default is defaulted, as the real server does); then the
//!   schema is validated with the real server's messages (types, `enum`,
//!   `required`, `minimum`/`maximum` and their exclusive forms,
//!   `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`, unique
//!   items of `set` and `map` lists, simple `format`s, `allOf`, `anyOf`,
//!   `oneOf` and `not` on the defaulted value) and
//!   `x-kubernetes-validations` rules run through the fake's CEL
//!   interpreter ([`super::admission_policy`]) with `self` and, on updates,
//!   `oldSelf` (a rule that reads `oldSelf` is a transition rule and only
//!   runs on update, as on a real server). A strategic merge patch is 415,
//!   as for every custom resource; server-side apply follows the schema's
//!   `x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and
//!   `x-kubernetes-map-type`.
//! - **Deleting a CRD** deletes every object of it (watchers see them
//!   go), then the CRD; the resource is no longer served.
//!
//! Each CRD write makes new `'static` kind and schema records (leaked):
//! a test creates a handful of CRDs, and the records must outlive watches
//! that were opened on the old definition.

use serde_json::{Map, Value, json};

use super::KindInfo;
use super::schema::Schema;
use super::validate::Cause;

/// One served version of a CustomResourceDefinition.
pub struct Crd {
    /// The CRD's name (`httproutes.gateway.networking.k8s.io`).
    pub name: String,
    pub storage_version: &'static str,
    /// This version's `openAPIV3Schema`.
    pub schema: Value,
    /// The same, with `metadata` as the built-in `ObjectMeta`, for
    /// server-side apply and `kubectl explain`.
    pub nodes: &'static Schema,
    pub status: bool,
    /// The `scale` subresource's paths, when declared.
    pub scale: Option<Value>,
    pub columns: Vec<Value>,
    pub categories: Vec<String>,
}

impl std::fmt::Debug for Crd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crd")
            .field("name", &self.name)
            .field("storage_version", &self.storage_version)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

pub const PREFIX: &str = "apis/apiextensions.k8s.io/v1";
pub const PLURAL: &str = "customresourcedefinitions";

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or_default()
}

/// The kinds (one per served version) a stored CRD makes.
pub fn kinds_of(crd: &Value) -> Vec<&'static KindInfo> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = leak(text(spec, &["group"]));
    let plural = leak(text(names, &["plural"]));
    let kind = leak(text(names, &["kind"]));
    let singular = match text(names, &["singular"]) {
        "" => leak(&kind.to_lowercase()),
        s => leak(s),
    };
    let short: Vec<&'static str> = names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(leak)
        .collect();
    let short: &'static [&'static str] = Box::leak(short.into_boxed_slice());
    let categories: Vec<String> = names["categories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage = versions
        .iter()
        .find(|v| v["storage"] == true)
        .map(|v| leak(text(v, &["name"])))
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"] == true)
        .map(|v| {
            let schema = v["schema"]["openAPIV3Schema"].clone();
            let mut for_nodes = schema.clone();
            if let Some(p) = for_nodes
                .as_object_mut()
                .map(|o| o.entry("properties").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
            {
                p.insert(
                    "metadata".into(),
                    json!({"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
                );
                p.insert("apiVersion".into(), json!({"type": "string"}));
                p.insert("kind".into(), json!({"type": "string"}));
            }
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| {
                    vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
                });
            let crd: &'static Crd = Box::leak(Box::new(Crd {
                name: text(crd, &["metadata", "name"]).to_string(),
                storage_version: storage,
                schema,
                nodes: Box::leak(Box::new(Schema::of_root(for_nodes))),
                status: v["subresources"]["status"].is_object(),
                scale: v["subresources"]["scale"]
                    .as_object()
                    .map(|s| Value::Object(s.clone())),
                columns,
                categories: categories.clone(),
            }));
            &*Box::leak(Box::new(KindInfo {
                plural,
                singular,
                kind,
                group,
                version: leak(text(v, &["name"])),
                namespaced: text(spec, &["scope"]) == "Namespaced",
                short,
                create_only: false,
                crd: Some(crd),
            }))
        })
        .collect()
}

// === the CRD itself ===

/// What the server fills into a CRD's spec.
pub fn default_crd(crd: &mut Value) {
    let Some(spec) = crd.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    if let Some(kind) = spec["names"]["kind"].as_str().map(str::to_string) {
        let names = &mut spec["names"];
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if !spec["conversion"].is_object() {
        spec["conversion"] = json!({});
    }
    if spec["conversion"]["strategy"].is_null() {
        spec["conversion"]["strategy"] = json!("None");
    }
}

/// The status the server writes: accepted names, stored versions and the
/// `NamesAccepted` and `Established` conditions.
pub fn status_of(crd: &Value, old: Option<&Value>, now: &str) -> Value {
    let mut stored: Vec<Value> = old
        .and_then(|o| o["status"]["storedVersions"].as_array().cloned())
        .unwrap_or_default();
    for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
        if v["storage"] == true && !stored.contains(&v["name"]) {
            stored.push(v["name"].clone());
        }
    }
    let since = |t: &str| -> Value {
        old.and_then(|o| {
            o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == t)
                .map(|c| c["lastTransitionTime"].clone())
        })
        .unwrap_or_else(|| json!(now))
    };
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": since("Established")},
        ],
    })
}

fn cause(reason: &'static str, field: String, message: String) -> Cause {
    Cause {
        reason,
        field,
        message,
    }
}

/// A CRD's problems, as the real server words them (`old` on update).
pub fn check(crd: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let spec = &crd["spec"];
    let group = text(spec, &["group"]);
    let plural = text(spec, &["names", "plural"]);
    let kind = text(spec, &["names", "kind"]);
    let name = text(crd, &["metadata", "name"]);
    if group.is_empty() {
        out.push(cause(
            "FieldValueRequired",
            "spec.group".into(),
            "Required value".into(),
        ));
    } else if !group.contains('.') {
        out.push(cause(
            "FieldValueInvalid",
            "spec.group".into(),
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() {
        out.push(cause(
            "FieldValueRequired",
            "spec.names.plural".into(),
            "Required value".into(),
        ));
    }
    if kind.is_empty() {
        out.push(cause(
            "FieldValueRequired",
            "spec.names.kind".into(),
            "Required value".into(),
        ));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        out.push(cause(
            "FieldValueInvalid",
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    match text(spec, &["scope"]) {
        "Namespaced" | "Cluster" => {}
        "" => out.push(cause(
            "FieldValueRequired",
            "spec.scope".into(),
            "Required value".into(),
        )),
        other => out.push(cause(
            "FieldValueNotSupported",
            "spec.scope".into(),
            format!(
                "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        )),
    }
    match text(spec, &["conversion", "strategy"]) {
        "" | "None" => {}
        "Webhook" => out.push(cause(
            "FieldValueNotSupported",
            "spec.conversion.strategy".into(),
            "Unsupported value: \"Webhook\": supported values: \"None\" (this fake API server cannot call conversion webhooks)".into(),
        )),
        other => out.push(cause(
            "FieldValueNotSupported",
            "spec.conversion.strategy".into(),
            format!("Unsupported value: \"{other}\": supported values: \"None\", \"Webhook\""),
        )),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        out.push(cause(
            "FieldValueInvalid",
            "spec.versions".into(),
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        ));
    } else if versions.iter().filter(|v| v["storage"] == true).count() != 1 {
        let names: Vec<String> = versions
            .iter()
            .map(|v| format!("{:?}", text(v, &["name"])))
            .collect();
        out.push(cause(
            "FieldValueInvalid",
            "spec.versions".into(),
            format!(
                "Invalid value: [{}]: must have exactly one version marked as storage version",
                names.join(", ")
            ),
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        if text(v, &["name"]).is_empty() {
            out.push(cause(
                "FieldValueRequired",
                format!("{path}.name"),
                "Required value".into(),
            ));
        }
        let schema = &v["schema"]["openAPIV3Schema"];
        let schema_path = format!("{path}.schema.openAPIV3Schema");
        if !schema.is_object() {
            out.push(cause(
                "FieldValueRequired",
                schema_path,
                "Required value: schemas are required".into(),
            ));
            continue;
        }
        structural(schema, &schema_path, Place::Root, &mut out);
        if let Some(scale) = v["subresources"]["scale"].as_object() {
            for field in ["specReplicasPath", "statusReplicasPath"] {
                if scale.get(field).and_then(Value::as_str).is_none() {
                    out.push(cause(
                        "FieldValueRequired",
                        format!("{path}.subresources.scale.{field}"),
                        "Required value".into(),
                    ));
                }
            }
        }
    }
    if let Some(old) = old {
        for (i, stored) in old["status"]["storedVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let s = stored.as_str().unwrap_or_default();
            if !versions.iter().any(|v| v["name"] == s) {
                out.push(cause(
                    "FieldValueInvalid",
                    format!("status.storedVersions[{i}]"),
                    format!(
                        "Invalid value: \"{s}\": missing from spec.versions; {s} was previously a storage version, and must remain in spec.versions until a storage migration ensures no data remains persisted in {s} and {s} is removed from status.storedVersions"
                    ),
                ));
            }
        }
        for field in [["group"].as_slice(), &["names", "plural"], &["scope"]] {
            let path = format!("spec.{}", field.join("."));
            if text(&old["spec"], field) != text(spec, field) {
                out.push(cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: \"{}\": field is immutable",
                        text(spec, field)
                    ),
                ));
            }
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Place {
    Root,
    Property,
    Item,
}

/// The structural-schema rules, with the real server's messages.
fn structural(s: &Value, path: &str, place: Place, out: &mut Vec<Cause>) {
    let ty = s["type"].as_str();
    let int_or_string = s["x-kubernetes-int-or-string"] == true;
    let preserve = s["x-kubernetes-preserve-unknown-fields"] == true;
    if ty.is_none_or(str::is_empty) && !int_or_string && !(preserve && place != Place::Root) {
        let why = match place {
            Place::Root => "must not be empty at the root",
            Place::Property => "must not be empty for specified object fields",
            Place::Item => "must not be empty for specified array items",
        };
        out.push(cause(
            "FieldValueRequired",
            format!("{path}.type"),
            format!("Required value: {why}"),
        ));
    }
    if place == Place::Root
        && let Some(t) = ty.filter(|t| *t != "object")
    {
        out.push(cause(
            "FieldValueInvalid",
            format!("{path}.type"),
            format!("Invalid value: \"{t}\": must be object at the root"),
        ));
    }
    if s.get("$ref").is_some() {
        out.push(cause(
            "FieldValueForbidden",
            format!("{path}.$ref"),
            "Forbidden: $ref is not supported".into(),
        ));
    }
    if ty == Some("array") && !s["items"].is_object() {
        out.push(cause(
            "FieldValueRequired",
            format!("{path}.items"),
            "Required value: must be specified".into(),
        ));
    }
    if s["properties"].is_object()
        && (s["additionalProperties"].is_object() || s["additionalProperties"] == true)
    {
        out.push(cause(
            "FieldValueForbidden",
            format!("{path}.additionalProperties"),
            "Forbidden: additionalProperties and properties are mutual exclusive".into(),
        ));
    }
    match s["x-kubernetes-list-type"].as_str() {
        None | Some("atomic") | Some("set") => {}
        Some("map") => {
            if s["x-kubernetes-list-map-keys"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                out.push(cause(
                    "FieldValueRequired",
                    format!("{path}.x-kubernetes-list-map-keys"),
                    "Required value: must not be empty if x-kubernetes-list-type is map".into(),
                ));
            }
        }
        Some(other) => out.push(cause(
            "FieldValueNotSupported",
            format!("{path}.x-kubernetes-list-type"),
            format!(
                "Unsupported value: \"{other}\": supported values: \"atomic\", \"set\", \"map\""
            ),
        )),
    }
    for (i, rule) in s["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let r = rule["rule"].as_str().unwrap_or_default();
        if r.is_empty() {
            out.push(cause(
                "FieldValueRequired",
                format!("{path}.x-kubernetes-validations[{i}].rule"),
                "Required value".into(),
            ));
        } else if let Err(e) = cel_interpreter::Program::compile(r) {
            out.push(cause(
                "FieldValueInvalid",
                format!("{path}.x-kubernetes-validations[{i}].rule"),
                format!("Invalid value: \"{r}\": compilation failed: {e}"),
            ));
        }
    }
    for (k, child) in s["properties"].as_object().into_iter().flatten() {
        structural(
            child,
            &format!("{path}.properties[{k}]"),
            Place::Property,
            out,
        );
    }
    if s["items"].is_object() {
        structural(&s["items"], &format!("{path}.items"), Place::Item, out);
    }
    if s["additionalProperties"].is_object() {
        structural(
            &s["additionalProperties"],
            &format!("{path}.additionalProperties"),
            Place::Property,
            out,
        );
    }
    for (key, branch) in value_validations(s) {
        let branch_path = format!("{path}.{key}");
        nested_value_validation(branch, &branch_path, out);
        completeness(branch, s, path, &branch_path, out);
    }
}

/// The value-validation branches of a schema node: each `allOf`, `anyOf`
/// and `oneOf` entry and the `not`, named as in a field path.
fn value_validations(s: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, child) in s[key].as_array().into_iter().flatten().enumerate() {
            out.push((format!("{key}[{i}]"), child));
        }
    }
    if s["not"].is_object() {
        out.push(("not".into(), &s["not"]));
    }
    out
}

/// The structural rules for a schema under `allOf`/`anyOf`/`oneOf`/`not`
/// (the apiextensions server's `validateNestedValueValidation`): it only
/// constrains values, so it carries no `type`, `default`, `description`,
/// `nullable`, `additionalProperties` or `x-kubernetes-*` of its own (they
/// belong to the structural part next to it) and says nothing of
/// `metadata`. A missing `type` is what it should be, not an error.
fn nested_value_validation(s: &Value, path: &str, out: &mut Vec<Cause>) {
    let forbidden: [(&str, bool, &str); 14] = [
        (
            "type",
            s.get("type").is_some(),
            "must be empty to be structural",
        ),
        (
            "additionalProperties",
            s.get("additionalProperties").is_some(),
            "must be undefined to be structural",
        ),
        (
            "default",
            s.get("default").is_some(),
            "must be undefined to be structural",
        ),
        (
            "title",
            s.get("title").is_some(),
            "must be empty to be structural",
        ),
        (
            "description",
            s.get("description").is_some(),
            "must be empty to be structural",
        ),
        (
            "nullable",
            s["nullable"] == true,
            "must be false to be structural",
        ),
        (
            "externalDocs",
            s.get("externalDocs").is_some(),
            "must be undefined to be structural",
        ),
        (
            "x-kubernetes-preserve-unknown-fields",
            s["x-kubernetes-preserve-unknown-fields"] == true,
            "must be false to be structural",
        ),
        (
            "x-kubernetes-embedded-resource",
            s["x-kubernetes-embedded-resource"] == true,
            "must be false to be structural",
        ),
        (
            "x-kubernetes-int-or-string",
            s["x-kubernetes-int-or-string"] == true,
            "must be false to be structural",
        ),
        (
            "x-kubernetes-list-map-keys",
            s.get("x-kubernetes-list-map-keys").is_some(),
            "must be empty to be structural",
        ),
        (
            "x-kubernetes-list-type",
            s.get("x-kubernetes-list-type").is_some(),
            "must be undefined to be structural",
        ),
        (
            "x-kubernetes-map-type",
            s.get("x-kubernetes-map-type").is_some(),
            "must be undefined to be structural",
        ),
        (
            "x-kubernetes-validations",
            s.get("x-kubernetes-validations").is_some(),
            "must be empty to be structural",
        ),
    ];
    for (key, present, why) in forbidden {
        if present {
            out.push(cause(
                "FieldValueForbidden",
                format!("{path}.{key}"),
                format!("Forbidden: {why}"),
            ));
        }
    }
    if s["properties"].get("metadata").is_some() {
        out.push(cause(
            "FieldValueForbidden",
            format!("{path}.properties[metadata]"),
            "Forbidden: must not be specified in a nested context".into(),
        ));
    }
    for (k, child) in s["properties"].as_object().into_iter().flatten() {
        nested_value_validation(child, &format!("{path}.properties[{k}]"), out);
    }
    if s["items"].is_object() {
        nested_value_validation(&s["items"], &format!("{path}.items"), out);
    }
    for (key, branch) in value_validations(s) {
        nested_value_validation(branch, &format!("{path}.{key}"), out);
    }
}

/// Every field or item a value validation names must be in the
/// structural schema beside it (`validateStructuralCompleteness`).
fn completeness(v: &Value, s: &Value, s_path: &str, v_path: &str, out: &mut Vec<Cause>) {
    for (key, branch) in value_validations(v) {
        completeness(branch, s, s_path, &format!("{v_path}.{key}"), out);
    }
    if v["items"].is_object() {
        let (sp, vp) = (format!("{s_path}.items"), format!("{v_path}.items"));
        if s["items"].is_object() {
            completeness(&v["items"], &s["items"], &sp, &vp, out);
        } else {
            out.push(cause(
                "FieldValueRequired",
                sp,
                format!("Required value: because it is defined in {vp}"),
            ));
        }
    }
    for (k, child) in v["properties"].as_object().into_iter().flatten() {
        let (sp, vp) = (
            format!("{s_path}.properties[{k}]"),
            format!("{v_path}.properties[{k}]"),
        );
        match s["properties"].get(k) {
            Some(structural) => completeness(child, structural, &sp, &vp, out),
            None => out.push(cause(
                "FieldValueRequired",
                sp,
                format!("Required value: because it is defined in {vp}"),
            )),
        }
    }
}

// === custom resources: pruning, defaulting, validation ===

/// Drops the fields the schema does not know (the root's `apiVersion`,
/// `kind` and `metadata` are the caller's), naming each in `unknown`.
pub fn prune(v: &mut Value, s: &Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let preserve = s["x-kubernetes-preserve-unknown-fields"] == true;
            let embedded = s["x-kubernetes-embedded-resource"] == true;
            let props = s["properties"].as_object();
            let additional = &s["additionalProperties"];
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if (root || embedded) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(child) = props.and_then(|p| p.get(&k)) {
                    prune(
                        m.get_mut(&k).expect("key"),
                        child,
                        &child_path,
                        false,
                        unknown,
                    );
                } else if additional.is_object() {
                    prune(
                        m.get_mut(&k).expect("key"),
                        additional,
                        &child_path,
                        false,
                        unknown,
                    );
                } else if preserve || *additional == true {
                } else {
                    m.remove(&k);
                    unknown.push(child_path);
                }
            }
        }
        Value::Array(items) if s["items"].is_object() => {
            for (i, item) in items.iter_mut().enumerate() {
                prune(item, &s["items"], &format!("{path}[{i}]"), false, unknown);
            }
        }
        _ => {}
    }
}

/// Fills `default`s where fields are missing (or null where null is not
/// allowed), deepest last, as the real server's structural defaulting.
pub fn default(v: &mut Value, s: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = s["properties"].as_object() {
                for (k, child) in props {
                    let null_not_allowed = m.get(k).is_some_and(Value::is_null)
                        && child["nullable"] != true
                        && child.get("default").is_some();
                    if null_not_allowed {
                        m.remove(k);
                    }
                    if !m.contains_key(k)
                        && let Some(d) = child.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(x) = m.get_mut(k) {
                        default(x, child);
                    }
                }
            } else if s["additionalProperties"].is_object() {
                for x in m.values_mut() {
                    default(x, &s["additionalProperties"]);
                }
            }
        }
        Value::Array(items) if s["items"].is_object() => {
            for item in items {
                default(item, &s["items"]);
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How a value shows in an `Invalid value: ...` message.
fn shown(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// The schema's problems with `v` (at `path`), as the real server words
/// them; `old` is the same field's previous value, for `oldSelf`.
pub fn validate(v: &Value, s: &Value, path: &str, old: Option<&Value>, out: &mut Vec<Cause>) {
    if v.is_null() {
        if s["nullable"] != true && s.get("type").is_some() {
            let want = s["type"].as_str().unwrap_or_default();
            out.push(cause(
                "FieldValueTypeInvalid",
                path.into(),
                format!("Invalid value: \"null\": {path} in body must be of type {want}: \"null\""),
            ));
        }
        return;
    }
    let int_or_string = s["x-kubernetes-int-or-string"] == true;
    let found = type_name(v);
    if int_or_string {
        if !matches!(found, "integer" | "string") {
            out.push(cause(
                "FieldValueTypeInvalid",
                path.into(),
                format!(
                    "Invalid value: \"{found}\": {path} in body must be of type integer,string: \"{found}\""
                ),
            ));
            return;
        }
    } else if let Some(want) = s["type"].as_str() {
        let ok = want == found || (want == "number" && found == "integer");
        if !ok {
            out.push(cause(
                "FieldValueTypeInvalid",
                path.into(),
                format!(
                    "Invalid value: \"{found}\": {path} in body must be of type {want}: \"{found}\""
                ),
            ));
            return;
        }
    }
    if let Some(options) = s["enum"].as_array()
        && !options.contains(v)
    {
        let supported: Vec<String> = options.iter().map(Value::to_string).collect();
        out.push(cause(
            "FieldValueNotSupported",
            path.into(),
            format!(
                "Unsupported value: {}: supported values: {}",
                v,
                supported.join(", ")
            ),
        ));
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(max) = s["maximum"].as_f64() {
                let exclusive = s["exclusiveMaximum"] == true;
                if x > max || (exclusive && x >= max) {
                    out.push(cause(
                        "FieldValueInvalid",
                        path.into(),
                        format!(
                            "Invalid value: {n}: {path} in body should be less than {}{}",
                            if exclusive { "" } else { "or equal to " },
                            number_text(max)
                        ),
                    ));
                }
            }
            if let Some(min) = s["minimum"].as_f64() {
                let exclusive = s["exclusiveMinimum"] == true;
                if x < min || (exclusive && x <= min) {
                    out.push(cause(
                        "FieldValueInvalid",
                        path.into(),
                        format!(
                            "Invalid value: {n}: {path} in body should be greater than {}{}",
                            if exclusive { "" } else { "or equal to " },
                            number_text(min)
                        ),
                    ));
                }
            }
        }
        Value::String(t) => {
            let len = t.chars().count() as u64;
            if let Some(max) = s["maxLength"].as_u64()
                && len > max
            {
                out.push(cause(
                    "FieldValueTooLong",
                    path.into(),
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = s["minLength"].as_u64()
                && len < min
            {
                out.push(cause(
                    "FieldValueInvalid",
                    path.into(),
                    format!(
                        "Invalid value: \"{t}\": {path} in body should be at least {min} chars long"
                    ),
                ));
            }
            if let Some(p) = s["pattern"].as_str() {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(t) => out.push(cause(
                        "FieldValueInvalid",
                        path.into(),
                        format!("Invalid value: \"{t}\": {path} in body should match '{p}'"),
                    )),
                    Ok(_) => {}
                    Err(e) => out.push(cause(
                        "FieldValueInvalid",
                        path.into(),
                        format!(
                            "Invalid value: \"{p}\": the schema's pattern does not compile: {e}"
                        ),
                    )),
                }
            }
            if let Some(f) = s["format"].as_str()
                && let Some(problem) = format_problem(f, t)
            {
                out.push(cause(
                    "FieldValueInvalid",
                    path.into(),
                    format!(
                        "Invalid value: \"{t}\": {path} in body must be of type {f}: {problem}"
                    ),
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = s["maxItems"].as_u64()
                && n > max
            {
                out.push(cause(
                    "FieldValueTooMany",
                    path.into(),
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(min) = s["minItems"].as_u64()
                && n < min
            {
                out.push(cause(
                    "FieldValueInvalid",
                    path.into(),
                    format!("Invalid value: {n}: {path} in body should have at least {min} items"),
                ));
            }
            let keys: Vec<String> = s["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            let list_type = s["x-kubernetes-list-type"].as_str().unwrap_or("atomic");
            let identity = |item: &Value| -> Value {
                match list_type {
                    "map" => Value::Object(
                        keys.iter()
                            .map(|k| (k.clone(), item[k.as_str()].clone()))
                            .collect(),
                    ),
                    _ => item.clone(),
                }
            };
            if list_type == "set" || list_type == "map" {
                let mut seen: Vec<Value> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let id = identity(item);
                    if seen.contains(&id) {
                        out.push(cause(
                            "FieldValueDuplicate",
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {id}"),
                        ));
                    }
                    seen.push(id);
                }
            }
            if s["items"].is_object() {
                for (i, item) in items.iter().enumerate() {
                    // oldSelf of an item: by key in a map list.
                    let old_item = match (list_type, old.and_then(Value::as_array)) {
                        ("map", Some(olds)) => olds.iter().find(|o| identity(o) == identity(item)),
                        _ => None,
                    };
                    validate(item, &s["items"], &format!("{path}[{i}]"), old_item, out);
                }
            }
        }
        Value::Object(m) => {
            for r in s["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !m.contains_key(r) {
                    out.push(cause(
                        "FieldValueRequired",
                        if path.is_empty() {
                            r.to_string()
                        } else {
                            format!("{path}.{r}")
                        },
                        "Required value".into(),
                    ));
                }
            }
            for (k, x) in m {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child = s["properties"]
                    .get(k)
                    .or_else(|| Some(&s["additionalProperties"]).filter(|a| a.is_object()));
                if let Some(child) = child {
                    validate(x, child, &child_path, old.map(|o| &o[k.as_str()]), out);
                }
            }
        }
        _ => {}
    }
    junctors(v, s, path, out);
    rules(v, s, path, old, out);
}

/// `allOf`, `anyOf`, `oneOf` and `not`, evaluated on the value as it is
/// after defaulting (as the real server's schema validator sees it): a
/// branch holds when validating `v` against it finds nothing. So the
/// Gateway API's `addresses` item, `oneOf: [{type: enum [IPAddress]},
/// {type: not enum [IPAddress]}]`, takes an address that omits `type`:
/// the structural `default: IPAddress` has filled it before the `oneOf`
/// is asked. Only the junctor's own line is reported (the branches'
/// findings are how it decided), with the validator's wording.
fn junctors(v: &Value, s: &Value, path: &str, out: &mut Vec<Cause>) {
    let holds = |branch: &Value| {
        let mut found = Vec::new();
        validate(v, branch, path, None, &mut found);
        found.is_empty()
    };
    let shown_path = if path.is_empty() { "<root>" } else { path };
    let mut fail = |what: String| {
        out.push(cause(
            "FieldValueInvalid",
            path.into(),
            format!("Invalid value: {}: {shown_path} in body {what}", shown(v)),
        ))
    };
    if let Some(all) = s["allOf"].as_array()
        && !all.iter().all(holds)
    {
        fail("must validate all the schemas (allOf)".into());
    }
    if let Some(any) = s["anyOf"].as_array()
        && !any.iter().any(holds)
    {
        fail("must validate at least one schema (anyOf)".into());
    }
    if let Some(one) = s["oneOf"].as_array() {
        match one.iter().filter(|b| holds(b)).count() {
            1 => {}
            0 => fail("must validate one and only one schema (oneOf). Found none valid".into()),
            n => fail(format!(
                "must validate one and only one schema (oneOf). Found {n} valid alternatives"
            )),
        }
    }
    if s["not"].is_object() && holds(&s["not"]) {
        fail("must not validate the schema (not)".into());
    }
}

/// `x-kubernetes-validations` on this node.
fn rules(v: &Value, s: &Value, path: &str, old: Option<&Value>, out: &mut Vec<Cause>) {
    let Some(list) = s["x-kubernetes-validations"].as_array() else {
        return;
    };
    let old = old.filter(|o| !o.is_null());
    for rule in list {
        let expr = rule["rule"].as_str().unwrap_or_default();
        let transition = expr.contains("oldSelf");
        if transition && old.is_none() && rule["optionalOldSelf"] != true {
            continue;
        }
        let mut ctx = super::admission_policy::kubernetes_context();
        ctx.add_variable_from_value("self", super::admission_policy::to_cel(v));
        ctx.add_variable_from_value(
            "oldSelf",
            old.map(super::admission_policy::to_cel)
                .unwrap_or(cel_interpreter::Value::Null),
        );
        let field = match rule["fieldPath"].as_str() {
            Some(f) if !f.is_empty() => format!("{path}{f}"),
            _ => path.to_string(),
        };
        let failed = match super::admission_policy::run(expr, &ctx) {
            Ok(cel_interpreter::Value::Bool(true)) => continue,
            Ok(_) => rule["message"]
                .as_str()
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("failed rule: {expr}")),
            Err(e) => format!("rule evaluation error: {e}"),
        };
        let (reason, message) = match rule["reason"].as_str() {
            Some("FieldValueForbidden") => ("FieldValueForbidden", format!("Forbidden: {failed}")),
            Some("FieldValueRequired") => {
                ("FieldValueRequired", format!("Required value: {failed}"))
            }
            Some("FieldValueDuplicate") => {
                ("FieldValueDuplicate", format!("Duplicate value: {failed}"))
            }
            _ => (
                "FieldValueInvalid",
                format!("Invalid value: {}: {failed}", shown(v)),
            ),
        };
        out.push(cause(reason, field, message));
    }
}

/// The simple string formats the fake checks.
fn format_problem(format: &str, s: &str) -> Option<&'static str> {
    let ok = match format {
        "int32" | "int64" => s.parse::<i64>().is_ok(),
        "date-time" => super::tables::parse_rfc3339(s).is_some(),
        "hostname" => {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
        "uri" => s.contains("://"),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        _ => true,
    };
    (!ok).then_some("invalid format")
}

// === printing ===

/// The values at a JSONPath as printer columns use them: `.a.b`,
/// `.list[0].x`, `.list[*].x` and `.list[?(@.type=="Ready")].status`.
pub fn json_path_all(o: &Value, path: &str) -> Vec<Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current = vec![o.clone()];
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        let (step, after) = match rest.find(['.', '[']) {
            Some(0) if rest.starts_with('[') => {
                let end = rest.find(']').unwrap_or(rest.len() - 1);
                (&rest[..=end], &rest[end + 1..])
            }
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        rest = after.trim_start_matches('.');
        current = if let Some(inner) = step.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let items: Vec<Value> = current
                .iter()
                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                .collect();
            if inner == "*" {
                items
            } else if let Ok(i) = inner.parse::<usize>() {
                current.iter().filter_map(|v| v.get(i).cloned()).collect()
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (field, want) = filter.split_once("==").unwrap_or((filter, ""));
                let want = want.trim().trim_matches('"').trim_matches('\'');
                items
                    .into_iter()
                    .filter(|x| json_path(x, field.trim()).and_then(Value::as_str) == Some(want))
                    .collect()
            } else {
                Vec::new()
            }
        } else {
            current
                .iter()
                .filter_map(|v| v.get(step).cloned())
                .collect()
        };
    }
    current
}

/// The first value at a simple JSONPath (see [`json_path_all`]).
pub fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = o;
    for part in path.trim_start_matches('.').split('.') {
        if part.is_empty() {
            continue;
        }
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            v = v.get(field)?;
        }
        if let Some(i) = index {
            v = v.get(i)?;
        }
    }
    Some(v)
}

/// The table columns of a custom resource's version.
pub fn columns(crd: &Crd) -> Vec<Value> {
    let mut out = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    })];
    for c in &crd.columns {
        let ty = c["type"].as_str().unwrap_or("string");
        out.push(json!({
            "name": c["name"],
            "type": ty,
            "format": c["format"].as_str().unwrap_or_default(),
            "description": c["description"].as_str().unwrap_or_default(),
            "priority": c["priority"].as_i64().unwrap_or(0),
        }));
    }
    out
}

/// One object's cells for [`columns`].
pub fn cells(crd: &Crd, o: &Value) -> Vec<Value> {
    let mut out = vec![o["metadata"]["name"].clone()];
    for c in &crd.columns {
        let all = json_path_all(o, c["jsonPath"].as_str().unwrap_or_default());
        // Several values (a list, or `[*]`) print as the real printer
        // prints them: a list in JSON, several results comma-separated.
        let joined;
        let v = match all.as_slice() {
            [] => None,
            [one] => Some(one),
            many => {
                joined = json!(
                    many.iter()
                        .map(|x| x
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string()))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                Some(&joined)
            }
        };
        let cell = match (c["type"].as_str().unwrap_or("string"), v) {
            (_, None) | (_, Some(Value::Null)) => Value::Null,
            ("date", Some(t)) => json!(
                t.as_str()
                    .and_then(super::tables::parse_rfc3339)
                    .map(|at| super::tables::human_duration(super::tables::now_seconds() - at))
                    .unwrap_or_else(|| "<invalid>".into())
            ),
            ("integer" | "number" | "boolean", Some(x)) => x.clone(),
            (_, Some(Value::String(s))) => json!(s),
            (_, Some(x)) => json!(x.to_string()),
        };
        out.push(cell);
    }
    out
}

// === OpenAPI ===

/// The OpenAPI definition name of a custom kind: the group reversed, the
/// version and the kind (`io.k8s.networking.gateway.v1.HTTPRoute`).
pub fn definition_name(info: &KindInfo) -> String {
    let mut parts: Vec<&str> = info.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), info.version, info.kind)
}

/// The kind's schema as the OpenAPI document shows it.
pub fn definition(info: &KindInfo, crd: &Crd) -> Value {
    let mut s = crd.schema.clone();
    if let Some(o) = s.as_object_mut() {
        let props = o
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut p = Map::new();
        p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        p.insert("metadata".into(), json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata."}));
        for (k, v) in props {
            if k != "metadata" && k != "apiVersion" && k != "kind" {
                p.insert(k, v);
            }
        }
        o.insert("properties".into(), Value::Object(p));
        o.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": info.group, "version": info.version, "kind": info.kind}]),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_without_types_is_not_structural() {
        let mut out = Vec::new();
        structural(
            &json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}, "list": {"type": "array"}}}),
            "s",
            Place::Root,
            &mut out,
        );
        let messages: Vec<String> = out
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            messages,
            [
                "s.properties[list].items: Required value: must be specified",
                "s.properties[spec].type: Required value: must not be empty for specified object fields",
            ]
        );
    }

    #[test]
    fn defaults_fill_missing_and_null_fields_in_list_items() {
        let s = json!({"type": "object", "properties": {"refs": {"type": "array", "items": {
            "type": "object", "properties": {"name": {"type": "string"}, "weight": {"type": "integer", "default": 1}}}}}});
        let mut v = json!({"refs": [{"name": "a"}, {"name": "b", "weight": null}, {"name": "c", "weight": 5}]});
        default(&mut v, &s);
        assert_eq!(
            v["refs"],
            json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 5}])
        );
    }
}
