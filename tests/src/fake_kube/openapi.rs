//! The OpenAPI v3 documents the fake publishes, as a real API server does
//! at `/openapi/v3`, so that `kubectl` finds what it looks for:
//!
//! - **The root** (`GET /openapi/v3`) lists one entry per group-version the
//!   fake serves (`api/v1`, `apis/apps/v1`, ...), each with a
//!   `serverRelativeURL` carrying the document's hash (`?hash=`, upper-case
//!   hex SHA-512 of the document, as the real server's).
//! - **Each group-version document** (`openapi: 3.0.0`) has
//!   `components.schemas` built from the 1.35 definitions [`schema`] loads
//!   (the closure of every schema its kinds reach, `$ref`s rewritten to
//!   `#/components/schemas/...`, a `$ref` with siblings wrapped in `allOf`
//!   as the real generator writes it, `["T", "null"]` types back to `T`,
//!   IntOrString as `string`/`int-or-string`), and `paths` for every
//!   resource: list, create, read, replace, patch, delete and
//!   deletecollection (plus the `status` and `scale` subresources the fake
//!   serves), each operation with `x-kubernetes-action`,
//!   `x-kubernetes-group-version-kind` and the query parameters a real
//!   server lists (`dryRun`, `fieldManager`, `fieldValidation`, `force`,
//!   `propagationPolicy`, `labelSelector`, ...). kubectl reads the PATCH
//!   operation's `fieldValidation` parameter to decide that the server
//!   validates fields itself (then it sends `fieldValidation=Strict` and
//!   skips its own validation), and its request content types to compute a
//!   strategic merge patch from the schema's patch strategies.
//! - **Caching** as the real server: a document asked for with its current
//!   hash is `Cache-Control: public, immutable`; with a stale hash it is a
//!   301 to the current one; every answer has an `ETag` and an
//!   `If-None-Match` that matches is a 304. Only JSON is served: an `Accept`
//!   that admits neither JSON nor `*/*` (kubectl may prefer protobuf) is
//!   406, as a server without that encoding answers.
//!
//! [`schema`]: super::schema

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use super::schema::Schema;
use super::{FakeBody, KINDS, KindInfo, status_error};

/// The documents, built once per process from the schema and [`KINDS`].
struct Documents {
    root: Bytes,
    root_etag: String,
    /// Group-version path (`apis/apps/v1`) -> (hash, JSON).
    by_gv: BTreeMap<String, (String, Bytes)>,
}

fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(build)
}

fn hash_of(bytes: &[u8]) -> String {
    Sha512::digest(bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

fn build() -> Documents {
    let mut gvs: Vec<(&str, &str)> = KINDS.iter().map(|k| (k.group, k.version)).collect();
    gvs.sort();
    gvs.dedup();
    let mut by_gv = BTreeMap::new();
    let mut paths = Map::new();
    for (group, version) in gvs {
        let kinds: Vec<&KindInfo> = KINDS
            .iter()
            .filter(|k| k.group == group && k.version == version)
            .collect();
        let doc = serde_json::to_vec(&group_version_document(group, version, &kinds))
            .expect("documents serialise");
        let hash = hash_of(&doc);
        let gv_path = kinds[0].prefix();
        paths.insert(
            gv_path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv_path}?hash={hash}")}),
        );
        by_gv.insert(gv_path, (hash, Bytes::from(doc)));
    }
    let root = serde_json::to_vec(&json!({ "paths": paths })).expect("root serialises");
    Documents {
        root_etag: format!("\"{}\"", hash_of(&root)),
        root: Bytes::from(root),
        by_gv,
    }
}

/// Serves `GET /openapi/v3[/GV]`; `None` for any other path under
/// `/openapi` (the caller answers 404).
pub(super) fn serve(
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    crds: &[&'static KindInfo],
) -> Option<Response<FakeBody>> {
    let rest = path.strip_prefix("/openapi/v3")?;
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let json_ok = accept.split(',').any(|a| {
        let media = a.split(';').next().unwrap_or("").trim();
        matches!(media, "application/json" | "*/*" | "application/*" | "")
    });
    if !json_ok {
        return Some(status_error(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json (asked for {accept})"
            ),
        ));
    }
    let docs = documents();
    let gv = rest.trim_matches('/');
    // The CustomResourceDefinitions' group-versions, built per request.
    let mut custom: BTreeMap<String, (String, Bytes)> = BTreeMap::new();
    let mut gvs: Vec<(&str, &str)> = crds.iter().map(|k| (k.group, k.version)).collect();
    gvs.sort();
    gvs.dedup();
    for (group, version) in gvs {
        let kinds: Vec<&KindInfo> = crds
            .iter()
            .copied()
            .filter(|k| k.group == group && k.version == version)
            .collect();
        let doc = serde_json::to_vec(&custom_document(group, version, &kinds))
            .expect("documents serialise");
        custom.insert(kinds[0].prefix(), (hash_of(&doc), Bytes::from(doc)));
    }
    if gv.is_empty() {
        if custom.is_empty() {
            return Some(document(
                &docs.root,
                &docs.root_etag,
                headers,
                "no-cache, private",
            ));
        }
        let mut root: Value = serde_json::from_slice(&docs.root).expect("root is JSON");
        for (gv_path, (hash, _)) in &custom {
            root["paths"][gv_path] =
                json!({"serverRelativeURL": format!("/openapi/v3/{gv_path}?hash={hash}")});
        }
        let root = Bytes::from(serde_json::to_vec(&root).expect("root serialises"));
        let etag = format!("\"{}\"", hash_of(&root));
        return Some(document(&root, &etag, headers, "no-cache, private"));
    }
    let (hash, doc) = docs.by_gv.get(gv).or_else(|| custom.get(gv))?;
    let etag = format!("\"{hash}\"");
    match query.get("hash") {
        Some(asked) if asked != hash => Some(
            Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header("location", format!("/openapi/v3/{gv}?hash={hash}"))
                .header("cache-control", "no-cache, private")
                .body(Full::new(Bytes::new()).boxed())
                .expect("redirect"),
        ),
        Some(_) => Some(document(doc, &etag, headers, "public, immutable")),
        None => Some(document(doc, &etag, headers, "no-cache, private")),
    }
}

fn document(body: &Bytes, etag: &str, headers: &HeaderMap, cache: &str) -> Response<FakeBody> {
    let matches = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let builder = Response::builder()
        .header("etag", etag)
        .header("cache-control", cache)
        .header("vary", "Accept");
    if matches {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()).boxed())
            .expect("304");
    }
    builder
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()).boxed())
        .expect("document")
}

// === the group-version document ===

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

fn group_version_document(group: &str, version: &str, kinds: &[&KindInfo]) -> Value {
    let schema = Schema::get();
    let mut wanted: Vec<String> = vec![
        format!("{META}.Status"),
        format!("{META}.DeleteOptions"),
        format!("{META}.Patch"),
        format!("{META}.WatchEvent"),
    ];
    let mut paths = Map::new();
    for info in kinds {
        let Some(def) = schema.definition_name(&info.api_version(), info.kind) else {
            continue;
        };
        wanted.push(def.to_string());
        let list = format!("{def}List");
        if schema.definitions().contains_key(&list) {
            wanted.push(list);
        }
        if info.plural == "deployments" {
            wanted.push("io.k8s.api.autoscaling.v1.Scale".into());
        }
        resource_paths(info, def, &mut paths);
    }
    let mut components = Map::new();
    let mut seen = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(def) = schema.definitions().get(&name) else {
            continue;
        };
        collect_refs(def, &mut wanted);
        components.insert(name.clone(), convert(&name, def));
    }
    let title = if group.is_empty() {
        "Kubernetes".to_string()
    } else {
        format!("Kubernetes {group}")
    };
    json!({
        "openapi": "3.0.0",
        "info": {"title": title, "version": format!("{version} (sluice fake, 1.35 schema)")},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
        },
    })
}

/// A CustomResourceDefinition group-version's document: each kind's schema
/// from its CRD (`x-kubernetes-group-version-kind` on it), its list, and
/// the built-in definitions they refer to.
fn custom_document(group: &str, version: &str, kinds: &[&KindInfo]) -> Value {
    let schema = Schema::get();
    let mut wanted: Vec<String> = vec![
        format!("{META}.Status"),
        format!("{META}.DeleteOptions"),
        format!("{META}.Patch"),
        format!("{META}.WatchEvent"),
        format!("{META}.ObjectMeta"),
        format!("{META}.ListMeta"),
    ];
    let mut paths = Map::new();
    let mut components = Map::new();
    for info in kinds {
        let Some(c) = info.crd else { continue };
        let def = super::crd::definition_name(info);
        components.insert(def.clone(), super::crd::definition(info, c));
        components.insert(
            format!("{def}List"),
            json!({
                "type": "object",
                "description": format!("{}List is a list of {}", info.kind, info.kind),
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": schema_ref(&def)},
                    "metadata": {"allOf": [schema_ref(&format!("{META}.ListMeta"))]},
                },
                "x-kubernetes-group-version-kind": [{"group": info.group, "version": info.version, "kind": format!("{}List", info.kind)}],
            }),
        );
        if c.scale.is_some() {
            wanted.push("io.k8s.api.autoscaling.v1.Scale".into());
        }
        resource_paths(info, &def, &mut paths);
    }
    let mut seen = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(def) = schema.definitions().get(&name) else {
            continue;
        };
        collect_refs(def, &mut wanted);
        components.insert(name.clone(), convert(&name, def));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": format!("Kubernetes CRD Swagger {group}"), "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
        },
    })
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.rsplit('/').next().unwrap_or(r).to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// A definition as the real OpenAPI v3 document writes it.
fn convert(name: &str, def: &Value) -> Value {
    if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString" {
        return json!({"type": "string", "format": "int-or-string", "description": "IntOrString is a type that can hold an int32 or a string."});
    }
    if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
        return json!({"type": "string", "description": def.get("description").cloned().unwrap_or(json!("Quantity is a fixed-point representation of a number."))});
    }
    convert_node(def, true)
}

fn convert_node(v: &Value, top: bool) -> Value {
    let Value::Object(m) = v else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, x) in m {
        match k.as_str() {
            "$ref" => {}
            "type" => {
                let t = match x {
                    Value::Array(a) => a
                        .iter()
                        .find(|t| *t != "null")
                        .cloned()
                        .unwrap_or(json!("object")),
                    other => other.clone(),
                };
                out.insert(k.clone(), t);
            }
            // The strict variant forbids unknown fields this way; the real
            // document does not (the server decides, by fieldValidation).
            "additionalProperties" if *x == Value::Bool(false) => {}
            "properties" => {
                let props: Map<String, Value> = x
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(p, s)| {
                        let mut s = convert_node(s, false);
                        // apiVersion and kind are plain strings in the real document.
                        if top
                            && (p == "apiVersion" || p == "kind")
                            && let Some(o) = s.as_object_mut()
                        {
                            o.remove("enum");
                        }
                        (p.clone(), s)
                    })
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" | "not" => {
                out.insert(k.clone(), convert_node(x, false));
            }
            "oneOf" | "anyOf" | "allOf" => {
                let a = x
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| convert_node(s, false))
                    .collect();
                out.insert(k.clone(), Value::Array(a));
            }
            _ => {
                out.insert(k.clone(), x.clone());
            }
        }
    }
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        let target = format!("#/components/schemas/{}", r.rsplit('/').next().unwrap_or(r));
        if out.is_empty() {
            out.insert("$ref".into(), json!(target));
        } else {
            out.insert("allOf".into(), json!([{"$ref": target}]));
        }
    }
    Value::Object(out)
}

// === paths ===

fn schema_ref(def: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{def}")})
}

fn query_param(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn pretty() -> Value {
    query_param(
        "pretty",
        "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
        "string",
    )
}

fn dry_run() -> Value {
    query_param(
        "dryRun",
        "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
        "string",
    )
}

fn field_manager() -> Value {
    query_param(
        "fieldManager",
        "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
        "string",
    )
}

fn field_validation() -> Value {
    query_param(
        "fieldValidation",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. This is the default when the parameter is not set. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
        "string",
    )
}

fn list_params() -> Vec<Value> {
    vec![
        query_param(
            "allowWatchBookmarks",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
            "boolean",
        ),
        query_param(
            "continue",
            "The continue option should be set when retrieving more results from the server.",
            "string",
        ),
        query_param(
            "fieldSelector",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
            "string",
        ),
        query_param(
            "labelSelector",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
            "string",
        ),
        query_param(
            "limit",
            "limit is a maximum number of responses to return for a list call.",
            "integer",
        ),
        query_param(
            "resourceVersion",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
            "string",
        ),
        query_param(
            "resourceVersionMatch",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
            "string",
        ),
        query_param(
            "sendInitialEvents",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
            "boolean",
        ),
        query_param(
            "timeoutSeconds",
            "Timeout for the list/watch call.",
            "integer",
        ),
        query_param(
            "watch",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
            "boolean",
        ),
    ]
}

fn delete_params() -> Vec<Value> {
    vec![
        dry_run(),
        query_param(
            "gracePeriodSeconds",
            "The duration in seconds before the object should be deleted.",
            "integer",
        ),
        query_param(
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error.",
            "boolean",
        ),
        query_param(
            "orphanDependents",
            "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7.",
            "boolean",
        ),
        query_param(
            "propagationPolicy",
            "Whether and how garbage collection will be performed. Acceptable values are: 'Orphan', 'Background', 'Foreground'.",
            "string",
        ),
    ]
}

fn responses(code: &str, def: &str) -> Value {
    let content = json!({
        "application/json": {"schema": schema_ref(def)},
        "application/yaml": {"schema": schema_ref(def)},
        "application/vnd.kubernetes.protobuf": {"schema": schema_ref(def)},
    });
    let mut r = json!({"401": {"description": "Unauthorized"}});
    r[code] = json!({"description": "OK", "content": content});
    r
}

/// Upper camel case of a group and version, as operation ids spell them
/// (`rbac.authorization.k8s.io`, `v1` -> `RbacAuthorizationV1`).
fn camel(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.trim_end_matches(".k8s.io")
    };
    group
        .split('.')
        .chain([version])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

fn resource_paths(info: &KindInfo, def: &str, paths: &mut Map<String, Value>) {
    let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
    let gv = camel(info.group, info.version);
    let scoped = if info.namespaced { "Namespaced" } else { "" };
    let tags = json!([gv.clone()]);
    let op = |action: &str, verb: &str, suffix: &str, params: Vec<Value>, gvk: &Value| {
        json!({
            "tags": tags,
            "description": format!("{verb} {}", info.kind),
            "operationId": format!("{verb}{gv}{scoped}{}{suffix}", info.kind),
            "parameters": params,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let list_def = format!("{def}List");
    let collection = if info.namespaced {
        format!(
            "/{}/namespaces/{{namespace}}/{}",
            info.prefix(),
            info.plural
        )
    } else {
        format!("/{}/{}", info.prefix(), info.plural)
    };
    let mut scope_params = vec![];
    if info.namespaced {
        scope_params.push(path_param(
            "namespace",
            "object name and auth scope, such as for teams and projects",
        ));
    }
    let write_body =
        |def: &str| json!({"content": {"*/*": {"schema": schema_ref(def)}}, "required": true});
    let mut patch_body = json!({"content": {
        "application/apply-patch+yaml": {"schema": schema_ref(&format!("{META}.Patch"))},
        "application/json-patch+json": {"schema": schema_ref(&format!("{META}.Patch"))},
        "application/merge-patch+json": {"schema": schema_ref(&format!("{META}.Patch"))},
        "application/strategic-merge-patch+json": {"schema": schema_ref(&format!("{META}.Patch"))},
    }, "required": true});
    if info.crd.is_some() {
        // Custom resources take no strategic merge patch; kubectl reads
        // this to send a JSON merge patch instead.
        if let Some(c) = patch_body["content"].as_object_mut() {
            c.remove("application/strategic-merge-patch+json");
        }
    }
    let mut coll = Map::new();
    coll.insert(
        "parameters".into(),
        json!([scope_params.clone(), vec![pretty()]].concat()),
    );
    let mut post = op(
        "post",
        "create",
        "",
        vec![dry_run(), field_manager(), field_validation()],
        &gvk,
    );
    post["requestBody"] = write_body(def);
    let mut created = responses("200", def);
    created["201"] = created["200"].clone();
    created["202"] = created["200"].clone();
    post["responses"] = created;
    coll.insert("post".into(), post);
    if !info.create_only {
        let mut list = op("list", "list", "", list_params(), &gvk);
        list["responses"] = responses("200", &list_def);
        coll.insert("get".into(), list);
        let mut dc = op(
            "deletecollection",
            "deleteCollection",
            "",
            [delete_params(), list_params()].concat(),
            &gvk,
        );
        dc["requestBody"] =
            json!({"content": {"*/*": {"schema": schema_ref(&format!("{META}.DeleteOptions"))}}});
        dc["responses"] = responses("200", &format!("{META}.Status"));
        coll.insert("delete".into(), dc);
    }
    paths.insert(collection.clone(), Value::Object(coll));
    if info.create_only {
        return;
    }
    if info.namespaced {
        let mut all = op("list", "list", "ForAllNamespaces", list_params(), &gvk);
        all["operationId"] = json!(format!("list{gv}{}ForAllNamespaces", info.kind));
        all["responses"] = responses("200", &list_def);
        paths.insert(
            format!("/{}/{}", info.prefix(), info.plural),
            json!({"get": all, "parameters": [pretty()]}),
        );
    }
    let item_params = [
        vec![path_param("name", &format!("name of the {}", info.kind))],
        scope_params.clone(),
        vec![pretty()],
    ]
    .concat();
    let item_ops = |suffix: &str, def: &str, gvk: &Value, with_delete: bool| {
        let mut m = Map::new();
        m.insert("parameters".into(), json!(item_params));
        let mut get = op("get", "read", suffix, vec![], gvk);
        get["responses"] = responses("200", def);
        m.insert("get".into(), get);
        let mut put = op(
            "put",
            "replace",
            suffix,
            vec![dry_run(), field_manager(), field_validation()],
            gvk,
        );
        put["requestBody"] = write_body(def);
        let mut r = responses("200", def);
        r["201"] = r["200"].clone();
        put["responses"] = r;
        m.insert("put".into(), put);
        let mut patch = op(
            "patch",
            "patch",
            suffix,
            vec![
                dry_run(),
                field_manager(),
                field_validation(),
                query_param(
                    "force",
                    "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
                    "boolean",
                ),
            ],
            gvk,
        );
        patch["requestBody"] = patch_body.clone();
        let mut r = responses("200", def);
        r["201"] = r["200"].clone();
        patch["responses"] = r;
        m.insert("patch".into(), patch);
        if with_delete {
            let mut del = op("delete", "delete", suffix, delete_params(), gvk);
            del["requestBody"] = json!({"content": {"*/*": {"schema": schema_ref(&format!("{META}.DeleteOptions"))}}});
            let mut r = responses("200", &format!("{META}.Status"));
            r["202"] = r["200"].clone();
            del["responses"] = r;
            m.insert("delete".into(), del);
        }
        Value::Object(m)
    };
    let item = format!("{collection}/{{name}}");
    paths.insert(item.clone(), item_ops("", def, &gvk, true));
    if info.has_status() {
        paths.insert(
            format!("{item}/status"),
            item_ops("Status", def, &gvk, false),
        );
    }
    if info.plural == "deployments" || info.crd.is_some_and(|c| c.scale.is_some()) {
        let scale = json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
        paths.insert(
            format!("{item}/scale"),
            item_ops("Scale", "io.k8s.api.autoscaling.v1.Scale", &scale, false),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_is_listed_and_every_patch_takes_field_validation() {
        let docs = documents();
        let root: Value = serde_json::from_slice(&docs.root).unwrap();
        for k in KINDS {
            let entry = &root["paths"][k.prefix()];
            assert!(
                entry["serverRelativeURL"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(&format!("/openapi/v3/{}?hash=", k.prefix()))),
                "{}: {entry}",
                k.prefix()
            );
        }
        let apps: Value = serde_json::from_slice(&docs.by_gv["apis/apps/v1"].1).unwrap();
        let item = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        assert_eq!(
            item["patch"]["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        let names: Vec<&str> = item["patch"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["dryRun", "fieldManager", "fieldValidation", "force"]
        );
        let schemas = &apps["components"]["schemas"];
        let spec = &schemas["io.k8s.api.apps.v1.DeploymentSpec"];
        assert_eq!(
            spec["properties"]["template"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodTemplateSpec"
        );
        assert_eq!(spec["properties"]["replicas"]["type"], "integer");
        // Every $ref resolves inside the document.
        let mut refs = Vec::new();
        collect_refs(schemas, &mut refs);
        for r in refs {
            assert!(schemas.get(&r).is_some(), "dangling $ref {r}");
        }
    }

    #[test]
    fn operation_ids_are_spelled_as_the_real_ones() {
        assert_eq!(
            camel("rbac.authorization.k8s.io", "v1"),
            "RbacAuthorizationV1"
        );
        assert_eq!(camel("", "v1"), "CoreV1");
        assert_eq!(camel("apps", "v1"), "AppsV1");
    }
}
