//! An in-process fake of the Kubernetes API server, for what Sluice uses.
//!
//! It speaks the real REST and watch protocol over HTTP on 127.0.0.1, so a
//! real `kube::Client` talks to it unchanged: get, list (label and field
//! selectors), watch (from a resourceVersion, chunked JSON lines), create,
//! replace (409 on a stale resourceVersion), patch (JSON merge, JSON patch,
//! strategic merge and server-side apply, the last two applied as merges),
//! delete (finalizers hold an object with a deletionTimestamp; owner
//! references cascade in the background), and the `status` subresource.
//! Errors come back as `Status` objects with the real reasons and codes.
//!
//! No controllers run: tests play kubelet by writing `status` themselves.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// (api prefix like `apis/apps/v1` or `api/v1`, plural)
type Kind = (String, String);

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    pub event_type: &'static str,
    pub object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<WatchEvent>,
    /// Every write request, for tests that assert what was (not) changed.
    writes: Vec<(String, String)>,
    /// Writes to refuse: (plural, name) -> how many more to refuse with 500.
    failing_writes: BTreeMap<(String, String), u32>,
}

/// A running fake API server.
#[derive(Clone)]
pub struct FakeKube {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<WatchEvent>,
}

fn kind_name(plural: &str) -> &'static str {
    match plural {
        "deployments" => "Deployment",
        "services" => "Service",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
        "events" => "Event",
        "leases" => "Lease",
        "serviceaccounts" => "ServiceAccount",
        "roles" => "Role",
        "rolebindings" => "RoleBinding",
        "pods" => "Pod",
        "namespaces" => "Namespace",
        _ => "Unknown",
    }
}

fn api_version(prefix: &str) -> String {
    prefix
        .trim_start_matches("apis/")
        .trim_start_matches("api/")
        .to_string()
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response<FakeBody> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, &body)
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(code: StatusCode, body: &Value) -> Response<FakeBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

/// Parsed request path.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (format!("api/{}", parts.get(1)?), &parts[2..]),
        "apis" => (
            format!("apis/{}/{}", parts.get(1)?, parts.get(2)?),
            &parts[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let plural = rest.first()?.to_string();
    Some(Target {
        kind: (prefix, plural),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        status: rest.get(2) == Some(&"status"),
    })
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`.
pub fn labels_match(selector: &str, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                get(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k.trim()) == Some(v.trim())
            } else if let Some((k, set)) = term.split_once(" in ") {
                let values: Vec<&str> = set
                    .trim()
                    .trim_matches(|c| c == '(' || c == ')')
                    .split(',')
                    .map(str::trim)
                    .collect();
                get(k.trim()).is_some_and(|v| values.contains(&v))
            } else if let Some(k) = term.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(term).is_some()
            }
        })
}

fn fields_match(selector: &str, object: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v, negate) = match term.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return true,
            },
        };
        let actual = match k {
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => object["metadata"]["namespace"].as_str(),
            _ => return true,
        };
        (actual == Some(v)) != negate
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// RFC 6902 JSON patch (add, remove, replace, test).
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        let parts = pointer_parts(path);
        let (last, parent_parts) = parts.split_last().ok_or("empty path")?;
        let parent_path = if parent_parts.is_empty() {
            String::new()
        } else {
            format!(
                "/{}",
                parent_parts
                    .iter()
                    .map(|p| p.replace('~', "~0").replace('/', "~1"))
                    .collect::<Vec<_>>()
                    .join("/")
            )
        };
        match op["op"].as_str() {
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("remove") => {
                let parent = target
                    .pointer_mut(&parent_path)
                    .ok_or(format!("no {parent_path}"))?;
                match parent {
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if i >= a.len() {
                            return Err(format!("no {path}"));
                        }
                        a.remove(i);
                    }
                    Value::Object(o) => {
                        o.remove(last).ok_or(format!("no {path}"))?;
                    }
                    _ => return Err(format!("no {path}")),
                }
            }
            Some(kind @ ("add" | "replace")) => {
                let value = op["value"].clone();
                let parent = target
                    .pointer_mut(&parent_path)
                    .ok_or(format!("no {parent_path}"))?;
                match parent {
                    Value::Array(a) => {
                        if last == "-" {
                            a.push(value);
                        } else {
                            let i: usize = last.parse().map_err(|_| "bad index")?;
                            if kind == "add" {
                                if i > a.len() {
                                    return Err(format!("index {i} out of range"));
                                }
                                a.insert(i, value);
                            } else {
                                *a.get_mut(i).ok_or(format!("no {path}"))? = value;
                            }
                        }
                    }
                    Value::Object(o) => {
                        if kind == "replace" && !o.contains_key(last) {
                            return Err(format!("no {path}"));
                        }
                        o.insert(last.clone(), value);
                    }
                    _ => return Err(format!("no {parent_path}")),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl FakeKube {
    pub async fn start() -> Self {
        let (events, _) = broadcast::channel(4096);
        let mut fake = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: Arc::new(Mutex::new(Store::default())),
            events,
        };
        let server = fake.clone();
        fake.addr = crate::serve_http(move |req| {
            let server = server.clone();
            async move { server.handle(req).await }
        })
        .await;
        fake
    }

    /// A real `kube::Client` pointed at this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().expect("fake URL"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// A kubeconfig file that points at this server (for child processes).
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    // === direct access for tests ===

    fn key(prefix: &str, plural: &str, ns: &str, name: &str) -> (Kind, String, String) {
        (
            (prefix.to_string(), plural.to_string()),
            ns.to_string(),
            name.to_string(),
        )
    }

    /// The stored object, if any.
    pub fn get(&self, prefix: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .expect("store")
            .objects
            .get(&Self::key(prefix, plural, ns, name))
            .cloned()
    }

    /// Names of stored objects of a kind in a namespace.
    pub fn names(&self, prefix: &str, plural: &str, ns: &str) -> Vec<String> {
        let store = self.store.lock().expect("store");
        store
            .objects
            .keys()
            .filter(|(k, n, _)| k.0 == prefix && k.1 == plural && n == ns)
            .map(|(_, _, name)| name.clone())
            .collect()
    }

    /// The next `times` writes (create, replace, patch, delete) to the named
    /// object are refused with `500 InternalError`, as an API server whose
    /// etcd times out does. (Not 503: kube's client retries those itself.)
    pub fn fail_writes(&self, plural: &str, name: &str, times: u32) {
        self.store
            .lock()
            .expect("store")
            .failing_writes
            .insert((plural.to_string(), name.to_string()), times);
    }

    /// Every write so far: (method, path).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.store.lock().expect("store").writes.clone()
    }

    /// Creates or replaces an object as a client would, bypassing HTTP.
    pub fn put(&self, prefix: &str, plural: &str, ns: &str, mut object: Value) -> Value {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has a name")
            .to_string();
        let mut store = self.store.lock().expect("store");
        let key = Self::key(prefix, plural, ns, &name);
        let existing = store.objects.get(&key).cloned();
        let event_type = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.stamp(
            &mut store,
            &mut object,
            prefix,
            plural,
            ns,
            existing.as_ref(),
        );
        store.objects.insert(key, object.clone());
        self.emit(
            &mut store,
            (prefix.to_string(), plural.to_string()),
            ns,
            event_type,
            object.clone(),
        );
        object
    }

    /// Merges `patch` into a stored object (tests play kubelet with this).
    pub fn merge_into(
        &self,
        prefix: &str,
        plural: &str,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> Option<Value> {
        let mut object = self.get(prefix, plural, ns, name)?;
        merge(&mut object, &patch);
        Some(self.put(prefix, plural, ns, object))
    }

    /// Marks a Deployment's pods as all ready, at its current generation.
    pub fn make_ready(&self, ns: &str, name: &str) -> Option<Value> {
        let d = self.get("apis/apps/v1", "deployments", ns, name)?;
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        self.merge_into(
            "apis/apps/v1",
            "deployments",
            ns,
            name,
            json!({"status": {
                "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas,
            }}),
        )
    }

    fn stamp(
        &self,
        store: &mut Store,
        object: &mut Value,
        prefix: &str,
        plural: &str,
        ns: &str,
        existing: Option<&Value>,
    ) {
        store.rv += 1;
        let rv = store.rv;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        object["apiVersion"] = json!(api_version(prefix));
        object["kind"] = json!(kind_name(plural));
        let meta = object["metadata"].as_object_mut().expect("metadata object");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if !ns.is_empty() {
            meta.insert("namespace".into(), json!(ns));
        }
        match existing {
            Some(old) => {
                for k in ["uid", "creationTimestamp"] {
                    meta.insert(k.into(), old["metadata"][k].clone());
                }
                if let Some(ts) = old["metadata"].get("deletionTimestamp") {
                    meta.insert("deletionTimestamp".into(), ts.clone());
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = old.get("spec") != object.get("spec");
                object["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
            }
            None => {
                store.uid += 1;
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-0000-0000-{:012}", store.uid)),
                );
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                meta.insert("generation".into(), json!(1));
            }
        }
    }

    fn emit(
        &self,
        store: &mut Store,
        kind: Kind,
        ns: &str,
        event_type: &'static str,
        object: Value,
    ) {
        let event = WatchEvent {
            rv: store.rv,
            kind,
            namespace: ns.to_string(),
            event_type,
            object,
        };
        store.history.push(event.clone());
        let _ = self.events.send(event);
    }

    /// Removes an object now and cascades to its dependents.
    fn remove(&self, store: &mut Store, key: &(Kind, String, String)) {
        let Some(mut object) = store.objects.remove(key) else {
            return;
        };
        store.rv += 1;
        object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        let uid = object["metadata"]["uid"].clone();
        self.emit(store, key.0.clone(), &key.1, "DELETED", object);
        let dependents: Vec<_> = store
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for d in dependents {
            self.delete_key(store, &d);
        }
    }

    /// DELETE semantics: finalizers hold the object with a deletionTimestamp.
    fn delete_key(&self, store: &mut Store, key: &(Kind, String, String)) -> Option<Value> {
        let object = store.objects.get(key)?.clone();
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        if finalizers > 0 {
            if object["metadata"].get("deletionTimestamp").is_none() {
                let mut held = object.clone();
                held["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                store.rv += 1;
                held["metadata"]["resourceVersion"] = json!(store.rv.to_string());
                store.objects.insert(key.clone(), held.clone());
                self.emit(store, key.0.clone(), &key.1, "MODIFIED", held.clone());
                return Some(held);
            }
            return Some(object);
        }
        self.remove(store, key);
        Some(object)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<FakeBody> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let Some(target) = parse_path(&path) else {
            return status_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find {path}"),
            );
        };
        let q = query(&req);
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if method != Method::GET {
            let mut store = self.store.lock().expect("store");
            store.writes.push((method.to_string(), path.clone()));
            let name = target.name.clone().unwrap_or_default();
            if let Some(left) = store
                .failing_writes
                .get_mut(&(target.kind.1.clone(), name.clone()))
                && *left > 0
            {
                *left -= 1;
                return status_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!(
                        "Internal error occurred: etcdserver: request timed out ({} {name})",
                        target.kind.1
                    ),
                );
            }
        }
        let ns = target.namespace.clone().unwrap_or_default();
        match (&method, &target.name) {
            (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(target, q)
            }
            (&Method::GET, None) => self.list(target, q),
            (&Method::GET, Some(name)) => match self.get(&target.kind.0, &target.kind.1, &ns, name)
            {
                Some(o) => respond(StatusCode::OK, &o),
                None => not_found(&target.kind.1, name),
            },
            (&Method::POST, _) => {
                let mut object: Value = match parse_json(&body) {
                    Ok(v) => v,
                    Err(resp) => return *resp,
                };
                if object["metadata"]["name"].as_str().is_none() {
                    if let Some(prefix) = object["metadata"]["generateName"].as_str() {
                        let n = self.store.lock().expect("store").uid + 1;
                        object["metadata"]["name"] = json!(format!("{prefix}{n:05}"));
                    } else {
                        return status_error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            "metadata.name is required".into(),
                        );
                    }
                }
                let name = object["metadata"]["name"]
                    .as_str()
                    .expect("name")
                    .to_string();
                if self
                    .get(&target.kind.0, &target.kind.1, &ns, &name)
                    .is_some()
                {
                    return status_error(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", target.kind.1),
                    );
                }
                let created = self.put(&target.kind.0, &target.kind.1, &ns, object);
                respond(StatusCode::CREATED, &created)
            }
            (&Method::PUT, Some(name)) => {
                let Some(existing) = self.get(&target.kind.0, &target.kind.1, &ns, name) else {
                    return not_found(&target.kind.1, name);
                };
                let mut object: Value = match parse_json(&body) {
                    Ok(v) => v,
                    Err(resp) => return *resp,
                };
                if let Some(rv) = object["metadata"]["resourceVersion"].as_str()
                    && Some(rv) != existing["metadata"]["resourceVersion"].as_str()
                {
                    return status_error(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                            target.kind.1
                        ),
                    );
                }
                if target.status {
                    let mut updated = existing.clone();
                    updated["status"] = object["status"].clone();
                    object = updated;
                } else if existing.get("status").is_some() {
                    object["status"] = existing["status"].clone();
                }
                self.finish_write(&target, &ns, name, object)
            }
            (&Method::PATCH, Some(name)) => {
                let existing = self.get(&target.kind.0, &target.kind.1, &ns, name);
                let patch: Value = match parse_json(&body) {
                    Ok(v) => v,
                    Err(resp) => return *resp,
                };
                let is_apply = content_type.starts_with("application/apply-patch");
                let mut object = match existing {
                    Some(o) => o,
                    None if is_apply => json!({"metadata": {"name": name}}),
                    None => return not_found(&target.kind.1, name),
                };
                if content_type.starts_with("application/json-patch") {
                    if let Err(e) = json_patch(&mut object, &patch) {
                        return status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e);
                    }
                } else if target.status {
                    let mut status = object["status"].clone();
                    merge(&mut status, &patch["status"]);
                    object["status"] = status;
                } else {
                    let keep_status = object.get("status").cloned();
                    merge(&mut object, &patch);
                    if let Some(s) = keep_status {
                        object["status"] = s;
                    }
                }
                self.finish_write(&target, &ns, name, object)
            }
            (&Method::DELETE, Some(name)) => {
                let key = Self::key(&target.kind.0, &target.kind.1, &ns, name);
                let mut store = self.store.lock().expect("store");
                match self.delete_key(&mut store, &key) {
                    Some(o) => respond(StatusCode::OK, &o),
                    None => {
                        drop(store);
                        not_found(&target.kind.1, name)
                    }
                }
            }
            _ => status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path}"),
            ),
        }
    }

    /// Stores a write; an object being deleted whose finalizers are gone is removed.
    fn finish_write(
        &self,
        target: &Target,
        ns: &str,
        name: &str,
        object: Value,
    ) -> Response<FakeBody> {
        let deleting = object["metadata"].get("deletionTimestamp").is_some();
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        let stored = self.put(&target.kind.0, &target.kind.1, ns, object);
        if deleting && finalizers == 0 {
            let mut store = self.store.lock().expect("store");
            self.remove(
                &mut store,
                &Self::key(&target.kind.0, &target.kind.1, ns, name),
            );
        }
        respond(StatusCode::OK, &stored)
    }

    fn selected(
        &self,
        target: &Target,
        q: &BTreeMap<String, String>,
        object: &Value,
        ns: &str,
    ) -> bool {
        target.namespace.as_ref().is_none_or(|n| n == ns)
            && q.get("labelSelector")
                .is_none_or(|s| labels_match(s, &object["metadata"]["labels"]))
            && q.get("fieldSelector")
                .is_none_or(|s| fields_match(s, object))
    }

    fn list(&self, target: Target, q: BTreeMap<String, String>) -> Response<FakeBody> {
        let store = self.store.lock().expect("store");
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((k, ns, _), o)| *k == target.kind && self.selected(&target, &q, o, ns))
            .map(|(_, o)| o.clone())
            .collect();
        let body = json!({
            "kind": format!("{}List", kind_name(&target.kind.1)),
            "apiVersion": api_version(&target.kind.0),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        });
        respond(StatusCode::OK, &body)
    }

    fn watch(&self, target: Target, q: BTreeMap<String, String>) -> Response<FakeBody> {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(290));
        let mut rx = self.events.subscribe();
        let (backlog, initial): (Vec<WatchEvent>, Vec<Value>) = {
            let store = self.store.lock().expect("store");
            let backlog = store
                .history
                .iter()
                .filter(|e| e.rv > from)
                .cloned()
                .collect();
            let initial = if from == 0 {
                store
                    .objects
                    .iter()
                    .filter(|((k, ns, _), o)| {
                        *k == target.kind && self.selected(&target, &q, o, ns)
                    })
                    .map(|(_, o)| o.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (if from == 0 { Vec::new() } else { backlog }, initial)
        };
        let last_rv = backlog.last().map(|e| e.rv).unwrap_or(from);
        let this = self.clone();
        let stream = async_stream(move |tx| async move {
            for o in initial {
                if tx
                    .send(json!({"type": "ADDED", "object": o}))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            for e in backlog {
                if e.kind == target.kind
                    && this.selected(&target, &q, &e.object, &e.namespace)
                    && tx
                        .send(json!({"type": e.event_type, "object": e.object}))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    e = rx.recv() => match e {
                        Ok(e) if e.rv > last_rv && e.kind == target.kind && this.selected(&target, &q, &e.object, &e.namespace) => {
                            if tx.send(json!({"type": e.event_type, "object": e.object})).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("watch response")
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Box<Response<FakeBody>>> {
    serde_json::from_slice(body).map_err(|e| {
        let resp = status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("bad JSON: {e}"),
        );
        Box::new(resp)
    })
}

fn not_found(plural: &str, name: &str) -> Response<FakeBody> {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{plural} \"{name}\" not found"),
    )
}

/// A stream of watch lines fed by a task.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    tokio_stream_from(rx).map(|v| Ok(Frame::data(Bytes::from(format!("{v}\n")))))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Value>,
) -> impl futures::Stream<Item = Value> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_patches() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(labels_match("app=web,tier", &labels));
        assert!(labels_match("app in (web,api),!missing", &labels));
        assert!(!labels_match("app!=web", &labels));
        let mut o = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut o, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(o, json!({"a": {"c": 2, "d": 3}, "l": [1, 2]}));
        json_patch(
            &mut o,
            &json!([{"op": "add", "path": "/l/-", "value": 3}, {"op": "remove", "path": "/l/0"}]),
        )
        .unwrap();
        assert_eq!(o["l"], json!([2, 3]));
        assert!(json_patch(&mut o, &json!([{"op": "test", "path": "/l/0", "value": 9}])).is_err());
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
    }
}
