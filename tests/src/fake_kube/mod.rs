//! An in-process fake of the Kubernetes API server that behaves like one,
//! for what Sluice uses. It speaks the real REST and watch protocol over
//! HTTP on 127.0.0.1, so a real `kube::Client` (and the real `kubectl`,
//! through the `fake-apiserver` binary) talks to it unchanged.
//!
//! - **Requests** are authenticated by bearer token (or impersonation) and
//!   authorized by RBAC over the Roles and bindings in the store
//!   ([`rbac`]); a denial is a 403 `Forbidden` Status.
//! - **Writes** are decoded against the Kubernetes 1.35 schema ([`schema`]):
//!   wrong types are 400s, unknown fields 400s under
//!   `fieldValidation=Strict` (else dropped with a `Warning` header), wrong
//!   content types 415s. Patches follow the real semantics: JSON merge,
//!   JSON patch, strategic merge from the schema's patch strategies and
//!   merge keys ([`merge`]), and server-side apply with field ownership and
//!   conflicts ([`apply`]). Admission enforces owner-reference permissions
//!   (`blockOwnerDeletion` needs `update` on the owner's `finalizers`) and
//!   Pod Security (a namespace labelled `pod-security.kubernetes.io/enforce`).
//!   Validation and immutability are 422s with the API's causes
//!   ([`validate`]). Defaulting fills what the API server fills in a
//!   Deployment's pod template.
//! - **Objects** get uids, resourceVersions, creation times, generations
//!   (only the kinds a real server gives one: [`KindInfo::has_generation`]),
//!   `managedFields`; deletion honours finalizers and `propagationPolicy`
//!   (Background: dependents garbage-collected afterwards; Orphan: they lose
//!   the owner reference; Foreground: the owner waits for them).
//! - **Namespaces** as a cluster has them: `default`, `kube-node-lease`,
//!   `kube-public` and `kube-system` from the start, none deletable (403).
//!   Content is made only in a namespace that exists (404 otherwise) and is
//!   not being deleted (403). A deleted namespace is `Terminating` while its
//!   namespace controller deletes what is in it (finalizers still hold), and
//!   goes once it is empty. Tests set the scene with
//!   [`FakeKube::create_namespace`]. Discovery puts pods, services,
//!   deployments, replicasets and horizontalpodautoscalers in the `all`
//!   category, so `kubectl get all` works.
//! - **Subresources**: `status` for the kinds that have one, and a
//!   Deployment's `scale` (autoscaling/v1 Scale), as `kubectl scale` uses.
//! - **OpenAPI v3** ([`openapi`]): `/openapi/v3` and one document per
//!   group-version, from the same 1.35 schema, with every operation's
//!   `x-kubernetes-group-version-kind` and query parameters, so kubectl's
//!   default validation hands unknown fields to the server
//!   (`fieldValidation=Strict`: refused with the real wording; `Warn`: a
//!   `Warning` header; `Ignore`: dropped silently) and `kubectl explain` works.
//! - **Events** ([`events`]): one store behind `v1` and `events.k8s.io/v1`,
//!   converted by the documented field mapping, with field selectors and
//!   watches on both versions.
//! - **Controllers** ([`controllers`]) run: Deployments own ReplicaSets
//!   (`pod-template-hash`, revisions, the Deployment's annotations such as
//!   `kubernetes.io/change-cause` for `kubectl rollout history`) that own
//!   Pods, and roll by `maxSurge`/`maxUnavailable` or Recreate, reporting
//!   status and conditions as the real controller; Pods become ready after
//!   a delay (or when a test says so) and available after
//!   `minReadySeconds`; Services get EndpointSlices of their pods with
//!   `ready`/`serving`/`terminating` conditions.
//!   Invariants registered by a test are checked after every change.
//! - **Graceful deletion** of Pods ([`termination`]): a deleted pod stays,
//!   terminating, for its grace period (the request's, else
//!   `terminationGracePeriodSeconds`), out of its Service's ready endpoints
//!   and not counted by its ReplicaSet, until the fake's kubelet removes
//!   it. The default is a real cluster's 30 s; tests end it early with
//!   [`Options::termination_cap`] or [`FakeKube::finish_terminating`].
//! - **Server-side printing** ([`tables`]): `meta.k8s.io` Tables for
//!   `kubectl get` (the real printers' columns, cells and ages, `-o wide`,
//!   `-w`, `includeObject`), the default Name/Created At table for kinds
//!   without a printer, plain lists for every other `Accept`.
//! - **CustomResourceDefinitions** ([`crd`]): a CRD written through
//!   `apiextensions.k8s.io/v1` is checked (structural schema, names,
//!   one storage version), gets `NamesAccepted`/`Established`, and each
//!   served version becomes a resource like the built-in ones ([`KindInfo`]
//!   with `crd` set, kept in the fake's CRD registry): discovery, RBAC,
//!   watches, tables, OpenAPI, `status`/`scale`. Custom resources are pruned,
//!   defaulted and validated by the CRD's schema; they are stored in the
//!   storage version, so the direct-access helpers ([`FakeKube::get`],
//!   [`FakeKube::names`]) take the storage version's prefix.
//! - **Watches** start from a resourceVersion (410 Gone once it has been
//!   compacted away), send bookmarks when asked, and a watcher that lags
//!   behind its bounded buffer has its watch ended, never an event dropped.

pub mod admission_policy;
pub mod apply;
pub mod controllers;
pub mod crd;
pub mod events;
pub mod kubectl;
pub mod merge;
pub mod openapi;
mod protobuf;
pub mod rbac;
pub mod schema;
pub mod selector;
pub mod tables;
pub mod termination;
pub mod validate;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

pub use merge::json_merge as merge;
pub use rbac::User;

/// (api prefix like `apis/apps/v1` or `api/v1`, plural)
type Kind = (String, String);
type Key = (Kind, String, String);

/// A resource the fake serves.
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
    /// Only `create` (reviews).
    pub create_only: bool,
    /// The CustomResourceDefinition version this kind is ([`crd`]).
    pub crd: Option<&'static crd::Crd>,
}

impl KindInfo {
    pub fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Where objects of this resource are stored: Events of
    /// `events.k8s.io/v1` as `v1` Events, custom resources in their CRD's
    /// storage version.
    pub fn storage_prefix(&self) -> String {
        match self.crd {
            Some(c) => format!("apis/{}/{}", self.group, c.storage_version),
            None => events::storage_prefix(&self.prefix(), self.plural).to_string(),
        }
    }

    /// Whether the API server keeps `metadata.generation` for this resource:
    /// only the kinds whose registry strategy sets it (Kubernetes 1.35):
    /// those with a spec the controllers observe (Pods, Deployments,
    /// ReplicaSets, PodDisruptionBudgets, EndpointSlices, admission
    /// policies and their bindings, CRDs) and every custom resource. A
    /// ConfigMap, Secret, ServiceAccount, Service, Namespace, Event, Lease,
    /// Role or binding has none (HorizontalPodAutoscalers only from 1.37,
    /// behind `HPAGeneration`): the field is absent, not `1`, and an update
    /// cannot set it (the generic `BeforeUpdate` keeps the stored value).
    pub fn has_generation(&self) -> bool {
        self.crd.is_some()
            || matches!(
                self.plural,
                "pods"
                    | "deployments"
                    | "replicasets"
                    | "poddisruptionbudgets"
                    | "endpointslices"
                    | "validatingadmissionpolicies"
                    | "validatingadmissionpolicybindings"
                    | "customresourcedefinitions"
            )
    }

    /// Whether this resource has a `status` subresource.
    pub fn has_status(&self) -> bool {
        match self.crd {
            Some(c) => c.status,
            None => STATUS_SUBRESOURCES.contains(&self.plural),
        }
    }

    fn group_label(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

macro_rules! kind {
    ($plural:literal, $singular:literal, $kind:literal, $group:literal, $version:literal, $ns:literal, [$($short:literal),*]) => {
        KindInfo { plural: $plural, singular: $singular, kind: $kind, group: $group, version: $version, namespaced: $ns, short: &[$($short),*], create_only: false, crd: None }
    };
}

/// Every kind the fake serves.
pub const KINDS: &[KindInfo] = &[
    kind!("pods", "pod", "Pod", "", "v1", true, ["po"]),
    kind!("services", "service", "Service", "", "v1", true, ["svc"]),
    kind!(
        "configmaps",
        "configmap",
        "ConfigMap",
        "",
        "v1",
        true,
        ["cm"]
    ),
    kind!("secrets", "secret", "Secret", "", "v1", true, []),
    kind!(
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        "",
        "v1",
        true,
        ["sa"]
    ),
    kind!(
        "namespaces",
        "namespace",
        "Namespace",
        "",
        "v1",
        false,
        ["ns"]
    ),
    kind!("events", "event", "Event", "", "v1", true, ["ev"]),
    kind!(
        "deployments",
        "deployment",
        "Deployment",
        "apps",
        "v1",
        true,
        ["deploy"]
    ),
    kind!(
        "replicasets",
        "replicaset",
        "ReplicaSet",
        "apps",
        "v1",
        true,
        ["rs"]
    ),
    kind!(
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        "policy",
        "v1",
        true,
        ["pdb"]
    ),
    kind!(
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        "autoscaling",
        "v2",
        true,
        ["hpa"]
    ),
    kind!(
        "leases",
        "lease",
        "Lease",
        "coordination.k8s.io",
        "v1",
        true,
        []
    ),
    kind!(
        "events",
        "event",
        "Event",
        "events.k8s.io",
        "v1",
        true,
        ["ev"]
    ),
    kind!(
        "roles",
        "role",
        "Role",
        "rbac.authorization.k8s.io",
        "v1",
        true,
        []
    ),
    kind!(
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        "rbac.authorization.k8s.io",
        "v1",
        true,
        []
    ),
    kind!(
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        "rbac.authorization.k8s.io",
        "v1",
        false,
        []
    ),
    kind!(
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io",
        "v1",
        false,
        []
    ),
    kind!(
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        "discovery.k8s.io",
        "v1",
        true,
        []
    ),
    kind!(
        "validatingadmissionpolicies",
        "validatingadmissionpolicy",
        "ValidatingAdmissionPolicy",
        "admissionregistration.k8s.io",
        "v1",
        false,
        []
    ),
    kind!(
        "validatingadmissionpolicybindings",
        "validatingadmissionpolicybinding",
        "ValidatingAdmissionPolicyBinding",
        "admissionregistration.k8s.io",
        "v1",
        false,
        []
    ),
    KindInfo {
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        group: "authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short: &[],
        create_only: true,
        crd: None,
    },
    kind!(
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        "v1",
        false,
        ["crd", "crds"]
    ),
];

pub fn kind_info(prefix: &str, plural: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.plural == plural && k.prefix() == prefix)
}

fn kind_by_name(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.kind == kind && k.api_version() == api_version)
}

/// A built-in kind, else one of `crds`.
fn kind_in(crds: &[&'static KindInfo], prefix: &str, plural: &str) -> Option<&'static KindInfo> {
    kind_info(prefix, plural).or_else(|| {
        crds.iter()
            .copied()
            .find(|k| k.plural == plural && k.prefix() == prefix)
    })
}

// === responses ===

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(code: StatusCode, body: &Value) -> Response<FakeBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn reason_of(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        500 => "InternalError",
        _ => "Unknown",
    }
}

/// A `Status` error as the API server writes it.
pub fn status_error(code: StatusCode, reason: &str, message: String) -> Response<FakeBody> {
    respond(code, &status_body(code, reason, message, Value::Null))
}

fn status_body(code: StatusCode, reason: &str, message: String, details: Value) -> Value {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    if !details.is_null() {
        body["details"] = details;
    }
    body
}

fn not_found(info: &KindInfo, name: &str) -> Response<FakeBody> {
    respond(
        StatusCode::NOT_FOUND,
        &status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", info.group_label()),
            json!({"name": name, "group": info.group, "kind": info.plural}),
        ),
    )
}

/// The namespaces a new cluster has; they cannot be deleted (but for
/// `kube-node-lease`, which the real server also protects only in part,
/// all four are protected here).
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-node-lease", "kube-public", "kube-system"];

/// Why a namespaced object may not be created in `ns`, as the
/// NamespaceLifecycle admission plugin answers: the namespace does not
/// exist (404), or it is being deleted (403).
fn namespace_refusal(
    store: &Store,
    info: &KindInfo,
    ns: &str,
    name: &str,
) -> Option<Response<FakeBody>> {
    let namespace = store
        .objects
        .get(&FakeKube::key("api/v1", "namespaces", "", ns));
    match namespace {
        None => Some(respond(
            StatusCode::NOT_FOUND,
            &status_body(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
                json!({"name": ns, "kind": "namespaces"}),
            ),
        )),
        Some(n) if n["metadata"].get("deletionTimestamp").is_some() => Some(status_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                info.group_label()
            ),
        )),
        Some(_) => None,
    }
}

// === the store ===

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    pub event_type: &'static str,
    pub object: Value,
    /// The object before a MODIFIED event, when known: a watch with a
    /// selector sees an object leave it (DELETED) or enter it (ADDED).
    pub old: Option<Value>,
}

impl WatchEvent {
    /// This event as a watch with these selectors sees it, if at all
    /// (the apiserver cacher's `convertToWatchEvent`).
    fn seen_as(&self, labels: Option<&str>, fields: Option<&str>) -> Option<&'static str> {
        let now = selected(labels, fields, &self.object);
        if self.event_type != "MODIFIED" {
            return now.then_some(self.event_type);
        }
        let before = self
            .old
            .as_ref()
            .map_or(now, |o| selected(labels, fields, o));
        match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        }
    }
}

/// A write request the server took: method, path and body.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    pub method: String,
    pub path: String,
    pub user: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    /// Recent events; older ones are compacted away (410 Gone).
    history: VecDeque<WatchEvent>,
    compacted_rv: u64,
    writes: Vec<WriteRecord>,
    /// Every authorised request: who, and the RBAC attributes.
    requests: Vec<(String, rbac::Attributes)>,
    failing_writes: BTreeMap<(String, String), u32>,
    /// Requests by this user to this (resource, name) wait this long
    /// before they are served: an API server or network that hangs.
    hangs: BTreeMap<(String, String, String), Duration>,
    /// Extra defaults the API server fills into pod templates (a test can
    /// add one, as a newer API server would).
    extra_template_defaults: BTreeMap<String, Value>,
    violations: Vec<Violation>,
    next_ip: u32,
}

/// An invariant that failed, and when.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: String,
    pub rv: u64,
    pub detail: String,
}

/// A read-only view of the store, for invariants and controllers.
pub struct View<'a> {
    store: &'a Store,
}

impl View<'_> {
    pub fn get(&self, prefix: &str, plural: &str, ns: &str, name: &str) -> Option<&Value> {
        self.store
            .objects
            .get(&FakeKube::key(prefix, plural, ns, name))
    }

    pub fn list(&self, prefix: &str, plural: &str, ns: &str) -> Vec<&Value> {
        self.store
            .objects
            .iter()
            .filter(|((k, n, _), _)| {
                k.0 == events::storage_prefix(prefix, plural) && k.1 == plural && n == ns
            })
            .map(|(_, v)| v)
            .collect()
    }

    /// Ready endpoint addresses of a Service on `port` (the Service port's
    /// name, or "" for an unnamed one), as kube-proxy would see them.
    pub fn ready_endpoints(&self, ns: &str, service: &str, port: &str) -> usize {
        self.list("apis/discovery.k8s.io/v1", "endpointslices", ns)
            .into_iter()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == service)
            .filter(|s| {
                s["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"].as_str().unwrap_or("") == port && p["port"].is_number())
            })
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count()
    }
}

type Invariant = Box<dyn Fn(&View<'_>) -> Result<(), String> + Send + Sync>;

/// How pods become ready.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Readiness {
    /// Only when a test calls [`FakeKube::make_ready`].
    Manual,
    /// This long after the pod is created.
    After(Duration),
}

#[derive(Clone, Debug)]
pub struct Options {
    pub readiness: Readiness,
    /// Watch events kept for watches that resume; older ones are 410 Gone.
    pub history: usize,
    /// Events a watcher may fall behind before its watch is ended.
    pub watch_buffer: usize,
    /// Bookmarks to watchers that ask for them, this often.
    pub bookmark_interval: Duration,
    /// Where to listen (an ephemeral port on 127.0.0.1 by default).
    pub listen: SocketAddr,
    /// Serve HTTPS with a certificate from a test CA (kubectl sends bearer
    /// tokens over TLS only); the kubeconfig then carries the CA.
    pub tls: bool,
    /// How long the garbage collector waits before deleting dependents.
    pub gc_delay: Duration,
    /// The longest a pod stays terminating after a graceful delete (whole
    /// seconds), whatever its grace period; `None` (the default) waits the
    /// full period as a real kubelet whose containers take it all. Test
    /// helpers that do not look at terminating pods set `Some(ZERO)`.
    pub termination_cap: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            readiness: Readiness::Manual,
            history: 10_000,
            watch_buffer: 1_000,
            bookmark_interval: Duration::from_secs(1),
            gc_delay: Duration::from_millis(50),
            termination_cap: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
        }
    }
}

struct Watcher {
    kind: Kind,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
    /// The resource the watch was opened on (an Event's version).
    view: &'static KindInfo,
    tx: tokio::sync::mpsc::Sender<Value>,
}

struct Inner {
    options: Options,
    store: Mutex<Store>,
    watchers: Mutex<Vec<Watcher>>,
    tokens: Mutex<BTreeMap<String, User>>,
    invariants: Mutex<Vec<(String, Invariant)>>,
    changed: tokio::sync::Notify,
    /// When each pod (by uid) was created, for delayed readiness.
    pod_born: Mutex<BTreeMap<String, std::time::Instant>>,
    /// When each orphan (by key) was first seen, for the GC's delay.
    orphans: Mutex<BTreeMap<Key, std::time::Instant>>,
    /// The CA of the serving certificate (PEM), when serving HTTPS.
    ca_pem: Option<String>,
    /// The kinds the stored CustomResourceDefinitions make ([`crd`]).
    /// Locked after `store` when both are held.
    crds: Mutex<Vec<&'static KindInfo>>,
}

/// A running fake API server.
#[derive(Clone)]
pub struct FakeKube {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

pub const ADMIN_TOKEN: &str = "fake-admin-token";
/// The operator's ServiceAccount, as `deploy/operator` installs it.
pub const OPERATOR_NAMESPACE: &str = "sluice-system";
pub const OPERATOR_ACCOUNT: &str = "sluice-operator";

impl FakeKube {
    /// A fake with the default options (pods ready only when told).
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let inner = Arc::new(Inner {
            options,
            store: Mutex::new(Store {
                next_ip: 1,
                ..Store::default()
            }),
            watchers: Mutex::new(Vec::new()),
            tokens: Mutex::new(BTreeMap::from([(ADMIN_TOKEN.to_string(), User::admin())])),
            invariants: Mutex::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
            pod_born: Mutex::new(BTreeMap::new()),
            orphans: Mutex::new(BTreeMap::new()),
            ca_pem: None,
            crds: Mutex::new(Vec::new()),
        });
        let mut fake = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            inner,
        };
        let listen = fake.inner.options.listen;
        if fake.inner.options.tls {
            let ca = crate::TestCa::new("fake kube-apiserver CA");
            let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"]);
            Arc::get_mut(&mut fake.inner)
                .expect("not shared yet")
                .ca_pem = Some(ca.cert_pem.clone());
            let server = fake.clone();
            fake.addr = crate::serve_https_on(listen, &cert, &key, move |req| {
                let server = server.clone();
                async move { server.handle(req).await }
            })
            .await;
        } else {
            let server = fake.clone();
            fake.addr = crate::serve_http_on(listen, move |req| {
                let server = server.clone();
                async move { server.handle(req).await }
            })
            .await;
        }
        for name in SYSTEM_NAMESPACES {
            fake.put(
                "api/v1",
                "namespaces",
                "",
                json!({"metadata": {"name": name}}),
            );
        }
        tokio::spawn(controllers::run(fake.clone()));
        fake
    }

    /// Creates a namespace, as `kubectl create namespace` would: objects
    /// can be made in a namespace only once it exists.
    pub fn create_namespace(&self, name: &str) -> Value {
        self.put(
            "api/v1",
            "namespaces",
            "",
            json!({"metadata": {"name": name}}),
        )
    }

    // === identities ===

    /// A bearer token for `user`.
    pub fn token_for(&self, user: User) -> String {
        let token = format!("token-{}", user.name.replace(':', "-"));
        self.inner
            .tokens
            .lock()
            .expect("tokens")
            .insert(token.clone(), user);
        token
    }

    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.token_for(User::service_account(namespace, name))
    }

    fn client_with_token(&self, token: &str) -> kube::Client {
        let scheme = if self.inner.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let mut config = kube::Config::new(
            format!("{scheme}://{}", self.addr)
                .parse()
                .expect("fake URL"),
        );
        config.auth_info.token = Some(token.to_string().into());
        if let Some(ca) = &self.inner.ca_pem {
            use rustls_pki_types::pem::PemObject;
            config.root_cert = Some(
                rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes())
                    .filter_map(Result::ok)
                    .map(|c| c.to_vec())
                    .collect(),
            );
        }
        kube::Client::try_from(config).expect("kube client")
    }

    /// A client with cluster-admin rights (`system:masters`): what a test
    /// uses to set up the world.
    pub fn client(&self) -> kube::Client {
        self.client_with_token(ADMIN_TOKEN)
    }

    /// A client authenticated as `user`.
    pub fn client_as(&self, user: User) -> kube::Client {
        let token = self.token_for(user);
        self.client_with_token(&token)
    }

    /// A client with the operator's identity, its rights those of the
    /// shipped `deploy/operator` RBAC (call [`FakeKube::install_operator_rbac`]).
    pub fn operator_client(&self) -> kube::Client {
        self.client_as(User::service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT))
    }

    /// Loads the ClusterRole and ClusterRoleBinding of `deploy/operator/rbac.yaml`,
    /// and makes the operator's namespace (`deploy/operator/namespace.yaml`).
    pub fn install_operator_rbac(&self) {
        if self
            .get("api/v1", "namespaces", "", OPERATOR_NAMESPACE)
            .is_none()
        {
            self.create_namespace(OPERATOR_NAMESPACE);
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace")
            .join("deploy/operator/rbac.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut v: Value = serde::Deserialize::deserialize(doc).expect("rbac.yaml is YAML");
            if v.is_null() {
                continue;
            }
            // As kustomize does with the install's namespace.
            // (`get_mut`: indexing would add `subjects: null` to a Role.)
            for subject in v
                .get_mut("subjects")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if subject["kind"] == "ServiceAccount" && subject["namespace"].is_null() {
                    subject["namespace"] = json!(OPERATOR_NAMESPACE);
                }
            }
            let api = v["apiVersion"].as_str().unwrap_or_default();
            let kind = v["kind"].as_str().unwrap_or_default();
            let info = kind_by_name(api, kind)
                .unwrap_or_else(|| panic!("rbac.yaml: {api} {kind} is not served by the fake"));
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or(if info.namespaced {
                    OPERATOR_NAMESPACE
                } else {
                    ""
                });
            self.put(&info.prefix(), info.plural, ns, v.clone());
        }
    }

    /// A kubeconfig file for this server with `token` (the admin's when None).
    pub fn kubeconfig_with(&self, path: &std::path::Path, token: Option<&str>) {
        let cluster = match &self.inner.ca_pem {
            Some(ca) => format!(
                "    server: https://{}\n    certificate-authority-data: {}\n",
                self.addr,
                base64(ca.as_bytes())
            ),
            None => format!("    server: http://{}\n", self.addr),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n{cluster}contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: {}\n",
            token.unwrap_or(ADMIN_TOKEN)
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// A kubeconfig file for this server, as the admin.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        self.kubeconfig_with(path, None);
    }

    // === direct access for tests ===

    /// The kind served at (prefix, plural): built in, or a CRD's.
    pub fn kind_at(&self, prefix: &str, plural: &str) -> Option<&'static KindInfo> {
        kind_in(&self.inner.crds.lock().expect("crds"), prefix, plural)
    }

    fn key(prefix: &str, plural: &str, ns: &str, name: &str) -> Key {
        (
            (
                events::storage_prefix(prefix, plural).to_string(),
                plural.to_string(),
            ),
            ns.to_string(),
            name.to_string(),
        )
    }

    /// The stored object, if any (an Event in the version asked for).
    pub fn get(&self, prefix: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let stored = self
            .inner
            .store
            .lock()
            .expect("store")
            .objects
            .get(&Self::key(prefix, plural, ns, name))
            .cloned()?;
        Some(if events::is_events_view(prefix, plural) {
            events::to_events(&stored)
        } else {
            stored
        })
    }

    /// Names of stored objects of a kind in a namespace.
    pub fn names(&self, prefix: &str, plural: &str, ns: &str) -> Vec<String> {
        let store = self.inner.store.lock().expect("store");
        store
            .objects
            .keys()
            .filter(|(k, n, _)| {
                k.0 == events::storage_prefix(prefix, plural) && k.1 == plural && n == ns
            })
            .map(|(_, _, name)| name.clone())
            .collect()
    }

    /// Every write so far: (method, path).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.inner
            .store
            .lock()
            .expect("store")
            .writes
            .iter()
            .map(|w| (w.method.clone(), w.path.clone()))
            .collect()
    }

    /// Every write so far, with who made it and the body.
    pub fn write_records(&self) -> Vec<WriteRecord> {
        self.inner.store.lock().expect("store").writes.clone()
    }

    /// Every request the server authorised, as (user, RBAC attributes).
    pub fn requests(&self) -> Vec<(String, rbac::Attributes)> {
        self.inner.store.lock().expect("store").requests.clone()
    }

    /// From now on, every request `user` makes to `plural`/`name` hangs for
    /// `for_how_long` before it is served (as with a stuck connection).
    pub fn hang(&self, user: &str, plural: &str, name: &str, for_how_long: Duration) {
        self.inner.store.lock().expect("store").hangs.insert(
            (user.to_string(), plural.to_string(), name.to_string()),
            for_how_long,
        );
    }

    /// The next `times` writes (create, replace, patch, delete) to the named
    /// object are refused with `500 InternalError`, as an API server whose
    /// etcd times out does. (Not 503: kube's client retries those itself.)
    pub fn fail_writes(&self, plural: &str, name: &str, times: u32) {
        self.inner
            .store
            .lock()
            .expect("store")
            .failing_writes
            .insert((plural.to_string(), name.to_string()), times);
    }

    /// From now on, the API server defaults `field` of every pod template
    /// container to `value`, as a newer Kubernetes release might.
    pub fn default_container_field(&self, field: &str, value: Value) {
        self.inner
            .store
            .lock()
            .expect("store")
            .extra_template_defaults
            .insert(field.to_string(), value);
    }

    /// Creates or replaces an object as the system would, bypassing HTTP,
    /// validation and admission (tests set the scene with this).
    pub fn put(&self, prefix: &str, plural: &str, ns: &str, object: Value) -> Value {
        let stored = {
            let mut store = self.inner.store.lock().expect("store");
            let name = object["metadata"]["name"]
                .as_str()
                .expect("object has a name")
                .to_string();
            let key = Self::key(prefix, plural, ns, &name);
            let existing = store.objects.get(&key).cloned();
            let mut object = object;
            if let Some(info) = self.kind_at(prefix, plural) {
                defaults(&mut store, info, &mut object, existing.as_ref());
            }
            self.commit(&mut store, prefix, plural, ns, object, existing.as_ref())
        };
        self.inner.changed.notify_one();
        stored
    }

    /// Merges `patch` into a stored object (JSON merge), as the system.
    pub fn merge_into(
        &self,
        prefix: &str,
        plural: &str,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> Option<Value> {
        let mut object = self.get(prefix, plural, ns, name)?;
        merge::json_merge(&mut object, &patch);
        Some(self.put(prefix, plural, ns, object))
    }

    /// Deletes an object as the system (finalizers still hold it).
    pub fn delete(&self, prefix: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let deleted = {
            let mut store = self.inner.store.lock().expect("store");
            self.delete_key(&mut store, &Self::key(prefix, plural, ns, name))
        };
        self.inner.changed.notify_one();
        deleted
    }

    /// Ends a terminating pod's grace period now (its containers exited):
    /// the pod is removed (or held by its finalizers). None when there is
    /// no such pod; a pod that is not terminating is left alone.
    pub fn finish_terminating(&self, ns: &str, pod: &str) -> Option<Value> {
        let mut store = self.inner.store.lock().expect("store");
        let key = Self::key("api/v1", "pods", ns, pod);
        let current = store.objects.get(&key)?.clone();
        if !termination::is_terminating(&current) {
            return Some(current);
        }
        termination::end(self, &mut store, &key)
    }

    /// Marks every pod of a Deployment's current template ready now (the
    /// kubelet), and waits until the Deployment reports it (not for
    /// `minReadySeconds`: such pods become available that much later).
    pub fn make_ready(&self, ns: &str, name: &str) -> Option<Value> {
        controllers::make_ready(self, ns, name)
    }

    /// Checks `check` after every change from now on; failures are kept
    /// (see [`FakeKube::violations`]).
    pub fn invariant(
        &self,
        name: &str,
        check: impl Fn(&View<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.inner
            .invariants
            .lock()
            .expect("invariants")
            .push((name.to_string(), Box::new(check)));
    }

    /// Every invariant failure so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.inner.store.lock().expect("store").violations.clone()
    }

    /// Runs `f` on a consistent view of the store.
    pub fn view<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> T {
        let store = self.inner.store.lock().expect("store");
        f(&View { store: &store })
    }

    // === storing ===

    /// Stamps and stores an object, emits its watch event, checks invariants.
    fn commit(
        &self,
        store: &mut Store,
        prefix: &str,
        plural: &str,
        ns: &str,
        object: Value,
        existing: Option<&Value>,
    ) -> Value {
        store.rv += 1;
        let object = self.stamp(store, prefix, plural, ns, object, existing, false);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = Self::key(prefix, plural, ns, &name);
        store.objects.insert(key, object.clone());
        if prefix == crd::PREFIX && plural == crd::PLURAL {
            let kinds = crd::kinds_of(&object);
            let mut crds = self.inner.crds.lock().expect("crds");
            crds.retain(|k| k.crd.is_none_or(|c| c.name != name));
            crds.extend(kinds);
        }
        let event_type = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.emit(
            store,
            (prefix.to_string(), plural.to_string()),
            ns,
            event_type,
            object.clone(),
            existing.cloned(),
        );
        object
    }

    /// An object as it is stored: apiVersion and kind, system metadata,
    /// generation. A dry run (`dry_run`) stamps it as the real server's
    /// dry run does, without a new resourceVersion and using no uid up.
    #[allow(clippy::too_many_arguments)]
    fn stamp(
        &self,
        store: &mut Store,
        prefix: &str,
        plural: &str,
        ns: &str,
        mut object: Value,
        existing: Option<&Value>,
        dry_run: bool,
    ) -> Value {
        let rv = store.rv;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let info = self.kind_at(prefix, plural);
        if let Some(info) = info {
            object["apiVersion"] = json!(info.api_version());
            object["kind"] = json!(info.kind);
        }
        let meta = object["metadata"].as_object_mut().expect("metadata object");
        match existing {
            _ if !dry_run => {
                meta.insert("resourceVersion".into(), json!(rv.to_string()));
            }
            Some(old) => {
                meta.insert(
                    "resourceVersion".into(),
                    old["metadata"]["resourceVersion"].clone(),
                );
            }
            None => {
                meta.remove("resourceVersion");
            }
        }
        if !ns.is_empty() {
            meta.insert("namespace".into(), json!(ns));
        }
        match existing {
            Some(old) => {
                for k in ["uid", "creationTimestamp"] {
                    meta.insert(k.into(), old["metadata"][k].clone());
                }
                for k in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                    if let Some(v) = old["metadata"].get(k) {
                        meta.insert(k.into(), v.clone());
                    }
                }
                // A request cannot set the generation; a kind without one
                // keeps whatever its object was created with (nothing,
                // unless the creator wrote one).
                let stored = old["metadata"].get("generation").cloned();
                if !info.is_some_and(|i| i.has_generation()) {
                    match stored {
                        Some(g) => object["metadata"]["generation"] = g,
                        None => {
                            if let Some(m) = object["metadata"].as_object_mut() {
                                m.remove("generation");
                            }
                        }
                    }
                    return object;
                }
                let generation = stored.and_then(|g| g.as_i64()).unwrap_or(1);
                // A custom resource's generation counts every change but
                // to metadata (and to status, when status is a subresource).
                let changed = match info.and_then(|i| i.crd) {
                    Some(c) => {
                        let strip = |o: &Value| {
                            let mut o = o.clone();
                            if let Some(m) = o.as_object_mut() {
                                m.remove("metadata");
                                if c.status {
                                    m.remove("status");
                                }
                            }
                            o
                        };
                        strip(old) != strip(&object)
                    }
                    // A Deployment's annotations count too: the
                    // controller copies them to its ReplicaSets
                    // (`deploymentStrategy.PrepareForUpdate`).
                    None if plural == "deployments" => {
                        // (No annotations and none at all are one.)
                        let notes = |o: &Value| {
                            o["metadata"]["annotations"]
                                .as_object()
                                .filter(|m| !m.is_empty())
                                .cloned()
                        };
                        old.get("spec") != object.get("spec") || notes(old) != notes(&object)
                    }
                    None => old.get("spec") != object.get("spec"),
                };
                object["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
            }
            None => {
                let uid = if dry_run {
                    store.uid + 1
                } else {
                    store.uid += 1;
                    store.uid
                };
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-0000-0000-{uid:012}")),
                );
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                // A kind with a generation starts at 1 whatever the
                // creator wrote; one without keeps what it was given.
                if info.is_some_and(|i| i.has_generation()) {
                    meta.insert("generation".into(), json!(1));
                }
            }
        }
        object
    }

    fn emit(
        &self,
        store: &mut Store,
        kind: Kind,
        ns: &str,
        event_type: &'static str,
        object: Value,
        old: Option<Value>,
    ) {
        let event = WatchEvent {
            rv: store.rv,
            kind,
            namespace: ns.to_string(),
            event_type,
            object,
            old,
        };
        store.history.push_back(event.clone());
        while store.history.len() > self.inner.options.history {
            if let Some(old) = store.history.pop_front() {
                store.compacted_rv = old.rv;
            }
        }
        // Each watcher has a bounded buffer: one that lags is cut off, so it
        // re-lists, rather than silently missing an event.
        let mut watchers = self.inner.watchers.lock().expect("watchers");
        watchers.retain(|w| {
            let seen = event.seen_as(w.labels.as_deref(), w.fields.as_deref());
            let Some(event_type) = seen.filter(|_| {
                w.kind == event.kind && w.namespace.as_ref().is_none_or(|n| *n == event.namespace)
            }) else {
                return !w.tx.is_closed();
            };
            let line =
                json!({"type": event_type, "object": served_as(w.view, event.object.clone())});
            w.tx.try_send(line).is_ok()
        });
        drop(watchers);
        self.check_invariants(store);
    }

    fn check_invariants(&self, store: &mut Store) {
        let invariants = self.inner.invariants.lock().expect("invariants");
        let mut found = Vec::new();
        {
            let view = View { store };
            for (name, check) in invariants.iter() {
                if let Err(detail) = check(&view) {
                    found.push(Violation {
                        invariant: name.clone(),
                        rv: store.rv,
                        detail,
                    });
                }
            }
        }
        store.violations.extend(found);
    }

    /// Removes an object now; its dependents go to the garbage collector.
    fn remove(&self, store: &mut Store, key: &Key) {
        let Some(mut object) = store.objects.remove(key) else {
            return;
        };
        if key.0.0 == crd::PREFIX && key.0.1 == crd::PLURAL {
            let name = &key.2;
            self.inner
                .crds
                .lock()
                .expect("crds")
                .retain(|k| k.crd.is_none_or(|c| c.name != *name));
        }
        store.rv += 1;
        object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        self.emit(store, key.0.clone(), &key.1, "DELETED", object, None);
        self.inner.changed.notify_one();
    }

    /// DELETE semantics: finalizers hold the object with a deletionTimestamp.
    fn delete_key(&self, store: &mut Store, key: &Key) -> Option<Value> {
        self.delete_key_with(store, key, None)
    }

    /// DELETE with a grace period asked (pods terminate gracefully:
    /// [`termination`]).
    fn delete_key_with(&self, store: &mut Store, key: &Key, grace: Option<i64>) -> Option<Value> {
        if key.0.0 == "api/v1"
            && key.0.1 == "pods"
            && let Some(held) = termination::begin(self, store, key, grace)
        {
            return Some(held);
        }
        let object = store.objects.get(key)?.clone();
        if key.0 == ("api/v1".to_string(), "namespaces".to_string()) {
            // Terminating: the namespace controller (`controllers`) deletes
            // what is in it, then the namespace.
            if object["metadata"].get("deletionTimestamp").is_some() {
                return Some(object);
            }
            let mut held = object;
            mark_as_deleting(&mut held);
            held["status"]["phase"] = json!("Terminating");
            store.rv += 1;
            held["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            store.objects.insert(key.clone(), held.clone());
            self.emit(store, key.0.clone(), &key.1, "MODIFIED", held.clone(), None);
            return Some(held);
        }
        if key.0.0 == crd::PREFIX && key.0.1 == crd::PLURAL {
            // The CRD's cleanup: every object of it goes first.
            let group = object["spec"]["group"].as_str().unwrap_or_default();
            let plural = object["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default();
            let prefix = format!("apis/{group}/");
            let doomed: Vec<Key> = store
                .objects
                .keys()
                .filter(|((p, pl), _, _)| p.starts_with(&prefix) && pl == plural)
                .cloned()
                .collect();
            for k in doomed {
                self.remove(store, &k);
            }
        }
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        if finalizers > 0 {
            if object["metadata"].get("deletionTimestamp").is_none() {
                let mut held = object.clone();
                mark_as_deleting(&mut held);
                store.rv += 1;
                held["metadata"]["resourceVersion"] = json!(store.rv.to_string());
                store.objects.insert(key.clone(), held.clone());
                self.emit(store, key.0.clone(), &key.1, "MODIFIED", held.clone(), None);
                return Some(held);
            }
            return Some(object);
        }
        self.remove(store, key);
        Some(object)
    }

    fn policy_allows(&self, store: &Store, user: &User, attrs: &rbac::Attributes) -> bool {
        if user.is_admin() {
            return true;
        }
        policy_of(store).allows(user, attrs)
    }
}

/// The API server's `markAsDeleting`: an object its finalizers hold gets
/// a deletionTimestamp, a grace period of zero and a new generation.
fn mark_as_deleting(object: &mut Value) {
    if object["metadata"].get("deletionTimestamp").is_none()
        && let Some(g) = object["metadata"]["generation"].as_i64()
        && g > 0
    {
        object["metadata"]["generation"] = json!(g + 1);
    }
    object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
}

fn policy_of(store: &Store) -> rbac::Policy<'_> {
    let of = |plural: &str| -> Vec<&Value> {
        store
            .objects
            .iter()
            .filter(|((k, _, _), _)| k.0 == "apis/rbac.authorization.k8s.io/v1" && k.1 == plural)
            .map(|(_, v)| v)
            .collect()
    };
    rbac::Policy {
        cluster_roles: of("clusterroles"),
        cluster_role_bindings: of("clusterrolebindings"),
        roles: of("roles"),
        role_bindings: of("rolebindings"),
    }
}

/// Sets `key` of an object to `value` when it is missing (or null).
fn default_field(object: &mut Value, key: &str, value: Value) {
    if let Some(m) = object.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.to_string(), value);
    }
}

/// What the API server fills in that the client left out.
fn defaults(store: &mut Store, info: &KindInfo, object: &mut Value, old: Option<&Value>) {
    if let Some(c) = info.crd {
        crd::default(object, &c.schema);
        return;
    }
    match info.kind {
        "CustomResourceDefinition" => crd::default_crd(object),
        "Namespace" => {
            let name = object["metadata"]["name"].clone();
            if !object["metadata"]["labels"].is_object() {
                object["metadata"]["labels"] = json!({});
            }
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if !object["spec"].is_object() {
                object["spec"] = json!({});
            }
            default_field(&mut object["spec"], "finalizers", json!(["kubernetes"]));
            if old.is_none() {
                object["status"] = json!({"phase": "Active"});
            }
        }
        "Deployment" => {
            let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
                return;
            };
            default_field(spec, "replicas", json!(1));
            default_field(spec, "revisionHistoryLimit", json!(10));
            default_field(spec, "progressDeadlineSeconds", json!(600));
            // SetDefaults_Deployment: RollingUpdate, 25% and 25%.
            default_field(spec, "strategy", json!({}));
            if let Some(strategy) = spec.get_mut("strategy").filter(|s| s.is_object()) {
                default_field(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == "RollingUpdate" {
                    default_field(strategy, "rollingUpdate", json!({}));
                    if let Some(r) = strategy.get_mut("rollingUpdate").filter(|r| r.is_object()) {
                        default_field(r, "maxUnavailable", json!("25%"));
                        default_field(r, "maxSurge", json!("25%"));
                    }
                }
            }
            let Some(pod) = spec
                .get_mut("template")
                .and_then(|t| t.get_mut("spec"))
                .filter(|p| p.is_object())
            else {
                return;
            };
            default_field(pod, "restartPolicy", json!("Always"));
            default_field(pod, "terminationGracePeriodSeconds", json!(30));
            default_field(pod, "dnsPolicy", json!("ClusterFirst"));
            default_field(pod, "schedulerName", json!("default-scheduler"));
            default_field(pod, "securityContext", json!({}));
            for list in ["containers", "initContainers"] {
                let Some(containers) = pod.get_mut(list).and_then(Value::as_array_mut) else {
                    continue;
                };
                for c in containers {
                    default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
                    default_field(c, "terminationMessagePolicy", json!("File"));
                    default_field(c, "resources", json!({}));
                    let latest = c["image"]
                        .as_str()
                        .is_some_and(|i| i.ends_with(":latest") || !i.contains(':'));
                    default_field(
                        c,
                        "imagePullPolicy",
                        json!(if latest { "Always" } else { "IfNotPresent" }),
                    );
                    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                        for p in ports {
                            default_field(p, "protocol", json!("TCP"));
                        }
                    }
                    for (k, v) in &store.extra_template_defaults {
                        default_field(c, k, v.clone());
                    }
                }
            }
        }
        "Service" => {
            let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
                return;
            };
            default_field(spec, "type", json!("ClusterIP"));
            default_field(spec, "sessionAffinity", json!("None"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    default_field(p, "protocol", json!("TCP"));
                    let port = p["port"].clone();
                    default_field(p, "targetPort", port);
                }
            }
            let old_ip = old
                .map(|o| o["spec"]["clusterIP"].clone())
                .unwrap_or(Value::Null);
            if spec
                .get("clusterIP")
                .is_none_or(|ip| ip.is_null() || *ip == "")
            {
                let ip = if old_ip.is_string() {
                    old_ip
                } else if spec["type"] == "ExternalName" {
                    Value::Null
                } else {
                    store.next_ip += 1;
                    json!(format!(
                        "10.96.{}.{}",
                        store.next_ip / 250,
                        store.next_ip % 250 + 1
                    ))
                };
                if !ip.is_null() {
                    spec["clusterIP"] = ip;
                }
            }
            if let Some(ip) = spec.get("clusterIP").filter(|ip| ip.is_string()).cloned() {
                spec["clusterIPs"] = json!([ip]);
            }
        }
        "Secret" => {
            // stringData is write-only: merged into data, base64-encoded.
            if let Some(Value::Object(sd)) =
                object.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                if !object.get("data").is_some_and(Value::is_object) {
                    object["data"] = json!({});
                }
                for (k, v) in sd {
                    object["data"][k] = json!(base64(v.as_str().unwrap_or_default().as_bytes()));
                }
            }
            default_field(object, "type", json!("Opaque"));
        }
        _ => {}
    }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn is_base64(s: &str) -> bool {
    s.len().is_multiple_of(4)
        && s.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || (b == b'=' && i >= s.len() - 2)
        })
}

pub fn now_rfc3339() -> String {
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

// === selectors ===

/// Label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`.
/// How Go's encoding/json names the type of a JSON value.
fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The finalizer that holds an owner deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Whether `object` has an owner reference to `uid`.
pub fn owned_by(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

/// Whether `labels` match a label selector (one that does not parse
/// matches nothing: requests with one are refused before this).
pub fn labels_match(selector: &str, labels: &Value) -> bool {
    selector::LabelSelector::parse(selector).is_ok_and(|s| s.matches(labels))
}

fn fields_match(selector: &str, object: &Value) -> bool {
    let Ok(terms) = selector::parse_fields(selector) else {
        return false;
    };
    terms.iter().all(|(k, v, negate)| {
        let actual = if object["kind"] == "Event" {
            events::field_value(object, k)
        } else {
            object.pointer(&format!("/{}", k.replace('.', "/")))
        };
        (actual.and_then(Value::as_str).unwrap_or("") == v) != *negate
    })
}

/// A list's or watch's selectors as the API server checks them: 400
/// BadRequest with the parser's message, or an unsupported field label.
fn check_selectors(
    info: &KindInfo,
    labels: Option<&String>,
    fields: Option<&String>,
) -> Result<(), String> {
    if let Some(l) = labels {
        selector::LabelSelector::parse(l)?;
    }
    if let Some(f) = stored_field_selector(info, fields) {
        for (field, _, _) in selector::parse_fields(&f)? {
            selector::check_field(info.kind, &field)?;
        }
    }
    Ok(())
}

fn selected(labels: Option<&str>, fields: Option<&str>, object: &Value) -> bool {
    labels.is_none_or(|s| labels_match(s, &object["metadata"]["labels"]))
        && fields.is_none_or(|s| fields_match(s, object))
}

/// The name a field selector pins (`metadata.name=x`), for RBAC.
fn selected_name(fields: Option<&str>) -> Option<String> {
    fields?
        .split(',')
        .find_map(|t| {
            t.strip_prefix("metadata.name=")
                .or_else(|| t.strip_prefix("metadata.name=="))
        })
        .map(str::to_string)
}

// === requests ===

/// Parsed request path.
struct Target {
    info: &'static KindInfo,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Resource(Target),
    Discovery(Value),
    UnknownResource(String),
}

fn parse_path(path: &str, addr: SocketAddr, crds: &[&'static KindInfo]) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["version"] => {
            return Some(Route::Discovery(json!({
                "major": "1", "minor": "35", "gitVersion": "v1.35.0-fake", "platform": "linux/amd64",
            })));
        }
        ["api"] => {
            return Some(Route::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
            })));
        }
        ["apis"] => return Some(Route::Discovery(group_list(crds))),
        ["api", v] => return Some(Route::Discovery(resource_list("", v, crds))),
        ["apis", g, v] => {
            let list = resource_list(g, v, crds);
            if list["resources"].as_array().is_none_or(Vec::is_empty) {
                return None;
            }
            return Some(Route::Discovery(list));
        }
        _ => {}
    }
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
    let plural = *rest.first()?;
    let Some(info) = kind_in(crds, &prefix, plural) else {
        return Some(Route::UnknownResource(format!("{prefix}/{plural}")));
    };
    Some(Route::Resource(Target {
        info,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    }))
}

/// The resources with a `status` subresource.
pub(crate) const STATUS_SUBRESOURCES: &[&str] = &[
    "deployments",
    "replicasets",
    "horizontalpodautoscalers",
    "services",
    "pods",
    "poddisruptionbudgets",
    "customresourcedefinitions",
];

fn group_list(crds: &[&'static KindInfo]) -> Value {
    // (group, versions in order, preferred): a CRD's preferred version is
    // its storage version.
    let mut groups: Vec<(&str, Vec<&str>, &str)> = Vec::new();
    for k in KINDS.iter().chain(crds.iter().copied()) {
        if k.group.is_empty() {
            continue;
        }
        let preferred = k.crd.map(|c| c.storage_version).unwrap_or(k.version);
        match groups.iter_mut().find(|(g, _, _)| *g == k.group) {
            Some((_, versions, _)) if versions.contains(&k.version) => {}
            Some((_, versions, _)) => versions.push(k.version),
            None => groups.push((k.group, vec![k.version], preferred)),
        }
    }
    groups.sort_by_key(|(g, _, _)| *g);
    json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": groups.iter().map(|(g, versions, p)| json!({
            "name": g,
            "versions": versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect::<Vec<_>>(),
            "preferredVersion": {"groupVersion": format!("{g}/{p}"), "version": p},
        })).collect::<Vec<_>>(),
    })
}

/// The built-in kinds in the `all` category (`kubectl get all`), as the
/// real server lists them.
const ALL_CATEGORY: [(&str, &str); 5] = [
    ("", "pods"),
    ("", "services"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("autoscaling", "horizontalpodautoscalers"),
];

fn resource_list(group: &str, version: &str, crds: &[&'static KindInfo]) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for k in KINDS
        .iter()
        .chain(crds.iter().copied())
        .filter(|k| k.group == group && k.version == version)
    {
        let verbs = if k.create_only {
            json!(["create"])
        } else {
            json!([
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch"
            ])
        };
        let mut resource = json!({
            "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
            "kind": k.kind, "verbs": verbs, "shortNames": k.short,
        });
        if let Some(c) = k.crd {
            resource["categories"] = json!(c.categories);
        } else if ALL_CATEGORY.contains(&(k.group, k.plural)) {
            resource["categories"] = json!(["all"]);
        }
        resources.push(resource);
        if k.crd.is_some_and(|c| c.scale.is_some()) {
            resources.push(json!({
                "name": format!("{}/scale", k.plural), "singularName": "", "namespaced": k.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if k.has_status() {
            resources.push(json!({
                "name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if k.plural == "deployments" {
            resources.push(json!({
                "name": "deployments/scale", "singularName": "", "namespaced": true,
                "group": "autoscaling", "version": "v1", "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
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

/// The body of a write, by content type: JSON, or YAML for apply.
fn parse_body(body: &[u8], content_type: &str) -> Result<Value, String> {
    if content_type.contains("yaml") {
        let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
        return serde_yaml_ng::from_str(text)
            .map_err(|e| format!("error converting YAML to JSON: {e}"));
    }
    serde_json::from_slice(body)
        .map_err(|e| format!("couldn't get version/kind; json parse error: {e}"))
}

/// The field manager of a write: the `fieldManager` parameter, else the
/// client's program name from its User-Agent (as the API server does).
fn manager_of(q: &BTreeMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = q.get("fieldManager") {
        return m.clone();
    }
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn plural_of(kind: &str) -> String {
    KINDS
        .iter()
        .find(|k| k.kind == kind)
        .map(|k| k.plural.to_string())
        .unwrap_or_else(|| format!("{}s", kind.to_lowercase()))
}

impl FakeKube {
    #[allow(clippy::result_large_err)] // the error is the finished response
    fn authenticate(&self, headers: &HeaderMap, store: &Store) -> Result<User, Response<FakeBody>> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let user = match token {
            None => User {
                name: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
            },
            Some(t) => self
                .inner
                .tokens
                .lock()
                .expect("tokens")
                .get(t)
                .cloned()
                .ok_or_else(|| {
                    status_error(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized",
                        "Unauthorized".into(),
                    )
                })?,
        };
        let Some(as_user) = headers
            .get("impersonate-user")
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(user);
        };
        let attrs = rbac::Attributes {
            verb: "impersonate".into(),
            group: "".into(),
            resource: "users".into(),
            subresource: None,
            namespace: None,
            name: Some(as_user.to_string()),
        };
        if !self.policy_allows(store, &user, &attrs) {
            return Err(status_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("users \"{as_user}\" is forbidden: {}", attrs.denial(&user)),
            ));
        }
        let mut groups: Vec<String> = headers
            .get_all("impersonate-group")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        if let Some(rest) = as_user.strip_prefix("system:serviceaccount:")
            && let Some((ns, _)) = rest.split_once(':')
        {
            groups.extend([
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ]);
        }
        groups.push("system:authenticated".into());
        Ok(User {
            name: as_user.to_string(),
            groups,
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<FakeBody> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let headers = req.headers().clone();
        let q = query(&req);
        let user = {
            let store = self.inner.store.lock().expect("store");
            match self.authenticate(&headers, &store) {
                Ok(u) => u,
                Err(resp) => return resp,
            }
        };
        let crds = self.inner.crds.lock().expect("crds").clone();
        if method == Method::GET
            && let Some(resp) = openapi::serve(&path, &q, &headers, &crds)
        {
            return resp;
        }
        let target = match parse_path(&path, self.addr, &crds) {
            Some(Route::Resource(t)) => t,
            Some(Route::Discovery(body)) => return respond(StatusCode::OK, &body),
            Some(Route::UnknownResource(_)) | None if path.starts_with("/openapi") => {
                // Only OpenAPI v3 is published (v2 is what kubectl falls
                // back to when v3 fails).
                return status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                );
            }
            Some(Route::UnknownResource(what)) => {
                return status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("the server could not find the requested resource ({what})"),
                );
            }
            None => {
                return status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("the server could not find the requested resource ({path})"),
                );
            }
        };
        let hang = {
            let store = self.inner.store.lock().expect("store");
            store
                .hangs
                .get(&(
                    user.name.clone(),
                    target.info.plural.to_string(),
                    target.name.clone().unwrap_or_default(),
                ))
                .copied()
        };
        if let Some(d) = hang {
            tokio::time::sleep(d).await;
        }
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match (&method, &target.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if watch => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            _ => {
                return status_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{method} is not supported on {path}"),
                );
            }
        };
        let name_for_rbac = match verb {
            "list" | "watch" => selected_name(q.get("fieldSelector").map(String::as_str)),
            "create" => None,
            _ => target.name.clone(),
        };
        let attrs = rbac::Attributes {
            verb: verb.into(),
            group: target.info.group.into(),
            resource: target.info.plural.into(),
            subresource: target.subresource.clone(),
            namespace: target.namespace.clone(),
            name: name_for_rbac,
        };
        if target.info.create_only {
            return self.review(&target, &user, verb, &body, &content_type);
        }
        {
            let mut store = self.inner.store.lock().expect("store");
            if self.policy_allows(&store, &user, &attrs) {
                store.requests.push((user.name.clone(), attrs.clone()));
            } else {
                let what = match &target.name {
                    Some(n) => format!("{} \"{n}\"", target.info.group_label()),
                    None => target.info.group_label(),
                };
                return respond(
                    StatusCode::FORBIDDEN,
                    &status_body(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!("{what} is forbidden: {}", attrs.denial(&user)),
                        json!({"name": target.name, "group": target.info.group, "kind": target.info.plural}),
                    ),
                );
            }
        }
        // kubectl sends a delete's dryRun in its DeleteOptions body.
        let body_dry_run = method == Method::DELETE
            && serde_json::from_slice::<Value>(&body).is_ok_and(|o| {
                o["dryRun"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x == "All"))
            });
        let dry_run = match q.get("dryRun").map(String::as_str) {
            None => body_dry_run,
            Some("All") => true,
            Some(other) => {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("dryRun: Unsupported value: \"{other}\": supported values: \"All\""),
                );
            }
        };
        // A dry run is not a write: nothing is recorded, nothing can fail
        // in storage.
        if method != Method::GET && !dry_run {
            let mut store = self.inner.store.lock().expect("store");
            store.writes.push(WriteRecord {
                method: method.to_string(),
                path: path.clone(),
                user: user.name.clone(),
                content_type: content_type.clone(),
                body: serde_json::from_slice(&body)
                    .or_else(|_| {
                        std::str::from_utf8(&body)
                            .map_err(|e| e.to_string())
                            .and_then(|t| serde_yaml_ng::from_str(t).map_err(|e| e.to_string()))
                    })
                    .unwrap_or(Value::Null),
            });
            let name = target.name.clone().unwrap_or_default();
            if let Some(left) = store
                .failing_writes
                .get_mut(&(target.info.plural.to_string(), name.clone()))
                && *left > 0
            {
                *left -= 1;
                return status_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!(
                        "Internal error occurred: etcdserver: request timed out ({} {name})",
                        target.info.plural
                    ),
                );
            }
        }
        let ns = target.namespace.clone().unwrap_or_default();
        match target.subresource.as_deref() {
            None => {}
            Some("status") if target.info.crd.is_none_or(|c| c.status) => {}
            Some("scale") if target.info.crd.is_some_and(|c| c.scale.is_some()) => {
                let response = self.scale(
                    &target,
                    &ns,
                    &method,
                    &q,
                    &headers,
                    &content_type,
                    &body,
                    &user,
                );
                self.inner.changed.notify_one();
                return response;
            }
            Some("scale") if target.info.plural == "deployments" && target.name.is_some() => {
                let response = self.scale(
                    &target,
                    &ns,
                    &method,
                    &q,
                    &headers,
                    &content_type,
                    &body,
                    &user,
                );
                self.inner.changed.notify_one();
                return response;
            }
            Some(other) => {
                return status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!(
                        "the server could not find the requested resource ({}/{other})",
                        target.info.plural
                    ),
                );
            }
        }
        if matches!(verb, "list" | "watch")
            && let Err(message) =
                check_selectors(target.info, q.get("labelSelector"), q.get("fieldSelector"))
        {
            return status_error(StatusCode::BAD_REQUEST, "BadRequest", message);
        }
        // Server-side printing (`kubectl get`): a Table when asked for one.
        let table = if method == Method::GET {
            let accept = headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            match tables::requested(accept, q.get("includeObject").map(String::as_str)) {
                Ok(t) => t,
                Err((code, message)) => {
                    let code = StatusCode::from_u16(code).expect("a status code");
                    return status_error(code, reason_of(code), message);
                }
            }
        } else {
            None
        };
        let response = match verb {
            "watch" => self.watch(&target, q, table),
            "list" => self.list(&target, &q, table),
            "get" => {
                let name = target.name.as_deref().expect("get has a name");
                let stored = self.get(&target.info.storage_prefix(), target.info.plural, &ns, name);
                match (stored.clone().map(|o| served_as(target.info, o)), table) {
                    (Some(o), None) => respond(StatusCode::OK, &o),
                    (Some(o), Some(t)) => {
                        let stored = stored.unwrap_or_else(|| o.clone());
                        let rv = o["metadata"]["resourceVersion"].clone();
                        respond(
                            StatusCode::OK,
                            &tables::table(
                                target.info,
                                &[(stored, o)],
                                json!({"resourceVersion": rv}),
                                t,
                                true,
                            ),
                        )
                    }
                    (None, _) => not_found(target.info, name),
                }
            }
            "delete" => self.delete_request(&target, &ns, &q, &body),
            "deletecollection" => status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "deletecollection is not supported by the fake".into(),
            ),
            _ => self.write(
                &target,
                &ns,
                &method,
                &q,
                &headers,
                &content_type,
                &body,
                &user,
            ),
        };
        self.inner.changed.notify_one();
        response
    }

    /// The `scale` subresource of a Deployment (autoscaling/v1 Scale), as
    /// `kubectl scale` and HPAs use it: reads show the replica count and
    /// selector; writes change `spec.replicas` through the Deployment's own
    /// patch path, so validation and resourceVersion rules are the same.
    #[allow(clippy::too_many_arguments)]
    fn scale(
        &self,
        target: &Target,
        ns: &str,
        method: &Method,
        q: &BTreeMap<String, String>,
        headers: &HeaderMap,
        content_type: &str,
        body: &[u8],
        user: &User,
    ) -> Response<FakeBody> {
        let info = target.info;
        let name = target.name.as_deref().expect("scale has a name");
        let Some(current) = self.get(&info.storage_prefix(), info.plural, ns, name) else {
            return not_found(info, name);
        };
        let current = served_as(info, current);
        // A custom resource's scale reads and writes the CRD's paths.
        let paths = info.crd.and_then(|c| c.scale.clone());
        let path_of = |key: &str, default: &str| -> String {
            paths
                .as_ref()
                .and_then(|p| p[key].as_str())
                .unwrap_or(default)
                .to_string()
        };
        let spec_path = path_of("specReplicasPath", ".spec.replicas");
        let status_path = path_of("statusReplicasPath", ".status.replicas");
        let selector_path = path_of("labelSelectorPath", "");
        let scale_of = |d: &Value| {
            if paths.is_some() {
                let at = |p: &str| crd::json_path(d, p).cloned().unwrap_or(Value::Null);
                return json!({
                    "apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {
                        "name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"],
                        "uid": d["metadata"]["uid"], "resourceVersion": d["metadata"]["resourceVersion"],
                        "creationTimestamp": d["metadata"]["creationTimestamp"],
                    },
                    "spec": {"replicas": at(&spec_path).as_i64().unwrap_or(0)},
                    "status": {"replicas": at(&status_path).as_i64().unwrap_or(0),
                               "selector": if selector_path.is_empty() { json!("") } else { json!(at(&selector_path).as_str().unwrap_or_default()) }},
                });
            }
            let selector = d["spec"]["selector"]["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            json!({
                "apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {
                    "name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"],
                    "uid": d["metadata"]["uid"], "resourceVersion": d["metadata"]["resourceVersion"],
                    "creationTimestamp": d["metadata"]["creationTimestamp"],
                },
                "spec": {"replicas": d["spec"]["replicas"].as_i64().unwrap_or(1)},
                "status": {"replicas": d["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
            })
        };
        let scale = scale_of(&current);
        if *method == Method::GET {
            return respond(StatusCode::OK, &scale);
        }
        let ct = if *method == Method::PUT {
            "application/json"
        } else {
            content_type
        };
        let wanted = match parse_body(body, ct) {
            Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e),
            Ok(patch) => match (method, ct) {
                (&Method::PUT, _) => {
                    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
                    {
                        return self.conflict_modified(info, name);
                    }
                    Ok(patch)
                }
                (_, "application/merge-patch+json") => {
                    let mut s = scale.clone();
                    merge::json_merge(&mut s, &patch);
                    Ok(s)
                }
                (_, "application/strategic-merge-patch+json") => {
                    merge::strategic_merge(&scale, &patch, None)
                }
                (_, "application/json-patch+json") => {
                    let mut s = scale.clone();
                    merge::json_patch(&mut s, &patch).map(|()| s)
                }
                _ => {
                    return status_error(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type})"
                        ),
                    );
                }
            },
        };
        let replicas = match wanted {
            Err(e) => return status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e),
            Ok(w) => match w["spec"]["replicas"].as_i64() {
                Some(r) if r >= 0 && r <= i64::from(i32::MAX) => r,
                _ => {
                    return self.invalid_kind(
                        "autoscaling",
                        "Scale",
                        name,
                        vec![validate::Cause {
                            reason: "FieldValueInvalid",
                            field: "spec.replicas".into(),
                            message: format!(
                                "Invalid value: {}: must be greater than or equal to 0",
                                w["spec"]["replicas"]
                            ),
                        }],
                    );
                }
            },
        };
        let write_target = Target {
            info,
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            subresource: None,
        };
        let mut patch = json!(replicas);
        for part in spec_path.trim_start_matches('.').split('.').rev() {
            patch = json!({ part: patch });
        }
        let patch = patch.to_string();
        let response = self.write(
            &write_target,
            ns,
            &Method::PATCH,
            q,
            headers,
            "application/merge-patch+json",
            patch.as_bytes(),
            user,
        );
        if !response.status().is_success() {
            return response;
        }
        if q.get("dryRun").is_some_and(|d| d == "All") {
            // Nothing was stored: the answer is the scale it would have.
            let mut would = scale;
            would["spec"]["replicas"] = json!(replicas);
            return respond(StatusCode::OK, &would);
        }
        match self.get(&info.storage_prefix(), info.plural, ns, name) {
            Some(d) => respond(StatusCode::OK, &scale_of(&served_as(info, d))),
            None => not_found(info, name),
        }
    }

    /// Create, replace or patch: decode, merge, default, admit, validate, store.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        target: &Target,
        ns: &str,
        method: &Method,
        q: &BTreeMap<String, String>,
        headers: &HeaderMap,
        content_type: &str,
        body: &[u8],
        user: &User,
    ) -> Response<FakeBody> {
        let info = target.info;
        // `kubectl create configmap` and its kin send built-in kinds in
        // protobuf, as a real server accepts them.
        let converted;
        let (content_type, body) =
            if *method == Method::POST && content_type == "application/vnd.kubernetes.protobuf" {
                match protobuf::object(body) {
                    Ok(object) => {
                        converted = serde_json::to_vec(&object).expect("JSON");
                        ("application/json", converted.as_slice())
                    }
                    Err(e) => {
                        return status_error(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "UnsupportedMediaType",
                            e,
                        );
                    }
                }
            } else {
                (content_type, body)
            };
        let events_view = events::is_events_view(&info.prefix(), info.plural);
        let prefix = info.storage_prefix();
        let is_apply = content_type == "application/apply-patch+yaml";
        let allowed_types: &[&str] = if *method == Method::PATCH && info.crd.is_some() {
            // Custom resources have no patch strategies.
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ]
        } else if *method == Method::PATCH {
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ]
        } else {
            &["application/json", "application/yaml"]
        };
        if !allowed_types.contains(&content_type) {
            return status_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: {}",
                    allowed_types.join(", ")
                ),
            );
        }
        let patch = match parse_body(body, content_type) {
            Ok(v) => v,
            Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e),
        };
        if is_apply && q.get("fieldManager").is_none() {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
            );
        }
        let manager = manager_of(q, headers);
        let root = match info.crd {
            Some(c) => c.nodes.root(),
            None => schema::Schema::get().kind(&info.api_version(), info.kind),
        };
        let mut store = self.inner.store.lock().expect("store");
        let name = match (method, &target.name) {
            (&Method::POST, _) => match patch["metadata"]["name"].as_str() {
                Some(n) => n.to_string(),
                None => match patch["metadata"]["generateName"].as_str() {
                    Some(p) => format!("{p}{:05}", store.uid + 1),
                    None => {
                        return self.invalid(
                            info,
                            "",
                            vec![validate::Cause {
                                reason: "FieldValueRequired",
                                field: "metadata.name".into(),
                                message: "Required value: name or generateName is required".into(),
                            }],
                        );
                    }
                },
            },
            (_, Some(n)) => n.clone(),
            _ => unreachable!("writes without a name are creates"),
        };
        let key = Self::key(&prefix, info.plural, ns, &name);
        let stored_existing = store.objects.get(&key).cloned();
        // Writes through events.k8s.io/v1 see and make that version's form.
        let existing = match &stored_existing {
            Some(e) if events_view => Some(events::to_events(e)),
            Some(e) if info.crd.is_some() => Some(served_as(info, e.clone())),
            other => other.clone(),
        };
        // The namespace in the body must be the request's.
        if let Some(body_ns) = patch["metadata"]["namespace"].as_str()
            && info.namespaced
            && body_ns != ns
            && !body_ns.is_empty()
        {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            );
        }
        if let Some(body_name) = patch["metadata"]["name"].as_str()
            && *method != Method::POST
            && body_name != name
            && !matches!(content_type, "application/json-patch+json")
        {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                ),
            );
        }
        // New content needs a namespace that exists and is not going away
        // (the NamespaceLifecycle admission plugin). Admission comes after
        // authorization: an apply that creates is checked below, once its
        // `create` is allowed.
        if info.namespaced
            && existing.is_none()
            && *method == Method::POST
            && let Some(refusal) = namespace_refusal(&store, info, ns, &name)
        {
            return refusal;
        }
        let now = now_rfc3339();
        let mut object = match (method, &existing) {
            (&Method::POST, Some(_)) => {
                return respond(
                    StatusCode::CONFLICT,
                    &status_body(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", info.group_label()),
                        json!({"name": name, "group": info.group, "kind": info.plural}),
                    ),
                );
            }
            (&Method::POST, None) => {
                let mut o = patch.clone();
                o["metadata"]["name"] = json!(name);
                o
            }
            (&Method::PUT, None) => return not_found(info, &name),
            (&Method::PUT, Some(old)) => {
                if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                    && Some(rv) != old["metadata"]["resourceVersion"].as_str()
                {
                    return self.conflict_modified(info, &name);
                }
                let mut o = patch.clone();
                if target.subresource.as_deref() == Some("status") {
                    let mut updated = old.clone();
                    updated["status"] = o["status"].clone();
                    o = updated;
                } else if old.get("status").is_some() && info.crd.is_none_or(|c| c.status) {
                    o["status"] = old["status"].clone();
                }
                o
            }
            (&Method::PATCH, None) if !is_apply => return not_found(info, &name),
            (&Method::PATCH, None)
                if !self.policy_allows(
                    &store,
                    user,
                    &rbac::Attributes {
                        verb: "create".into(),
                        group: info.group.into(),
                        resource: info.plural.into(),
                        subresource: None,
                        namespace: target.namespace.clone(),
                        name: Some(name.clone()),
                    },
                ) =>
            {
                // An apply that creates is authorised as `create` too.
                return status_error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "{} \"{name}\" is forbidden: {}",
                        info.group_label(),
                        rbac::Attributes {
                            verb: "create".into(),
                            group: info.group.into(),
                            resource: info.plural.into(),
                            subresource: None,
                            namespace: target.namespace.clone(),
                            name: None,
                        }
                        .denial(user)
                    ),
                );
            }
            (&Method::PATCH, _) => {
                if existing.is_none()
                    && info.namespaced
                    && let Some(refusal) = namespace_refusal(&store, info, ns, &name)
                {
                    return refusal;
                }
                if existing.is_none() {
                    store.requests.push((
                        user.name.clone(),
                        rbac::Attributes {
                            verb: "create".into(),
                            group: info.group.into(),
                            resource: info.plural.into(),
                            subresource: None,
                            namespace: target.namespace.clone(),
                            name: Some(name.clone()),
                        },
                    ));
                }
                let base = existing
                    .clone()
                    .unwrap_or_else(|| json!({"metadata": {"name": name}}));
                if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                    && content_type != "application/json-patch+json"
                    && Some(rv) != base["metadata"]["resourceVersion"].as_str()
                {
                    return self.conflict_modified(info, &name);
                }
                let merged = match content_type {
                    "application/json-patch+json" => {
                        let mut o = base.clone();
                        match merge::json_patch(&mut o, &patch) {
                            Ok(()) => Ok(o),
                            Err(e) => Err((StatusCode::UNPROCESSABLE_ENTITY, e)),
                        }
                    }
                    "application/merge-patch+json" => {
                        let mut o = base.clone();
                        merge::json_merge(&mut o, &patch);
                        Ok(o)
                    }
                    "application/strategic-merge-patch+json" => {
                        merge::strategic_merge(&base, &patch, root)
                            .map_err(|e| (StatusCode::BAD_REQUEST, e))
                    }
                    _ => {
                        let force = q.get("force").is_some_and(|f| f == "true");
                        if patch["apiVersion"].as_str() != Some(&info.api_version())
                            || patch["kind"].as_str() != Some(info.kind)
                        {
                            return status_error(
                                StatusCode::BAD_REQUEST,
                                "BadRequest",
                                format!(
                                    "apply requires apiVersion {} and kind {} in the body",
                                    info.api_version(),
                                    info.kind
                                ),
                            );
                        }
                        let mut applied = patch.clone();
                        let mut problems = Vec::new();
                        if let Some(r) = root {
                            let strict =
                                q.get("fieldValidation").map(String::as_str) == Some("Strict");
                            decode_as(info, r, &mut applied, !strict, &mut problems);
                            if let Some(resp) = decode_failure(info, &problems, strict) {
                                return resp;
                            }
                        }
                        match apply::apply(
                            existing.as_ref(),
                            &applied,
                            &manager,
                            force,
                            &info.api_version(),
                            &now,
                            root,
                        ) {
                            Ok(o) => Ok(o),
                            Err(conflicts) => return apply_conflict(&conflicts),
                        }
                    }
                };
                let mut o = match merged {
                    Ok(o) => o,
                    Err((code, e)) => return status_error(code, reason_of(code), e),
                };
                if !o.is_object() {
                    return status_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!(
                            "{} in version \"{}\" cannot be handled as a {}: json: cannot unmarshal {} into Go value of type struct",
                            info.kind,
                            info.version,
                            info.kind,
                            json_type_name(&o)
                        ),
                    );
                }
                // What the patch made must still be the object on the URL.
                if let Some(patched) = o["metadata"]["name"].as_str()
                    && patched != name
                {
                    return status_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!(
                            "the name of the object ({patched}) does not match the name on the URL ({name})"
                        ),
                    );
                }
                if let Some(patched) = o["metadata"]["namespace"].as_str()
                    && info.namespaced
                    && !patched.is_empty()
                    && patched != ns
                {
                    return status_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    );
                }
                if let Some(old) = &existing {
                    if target.subresource.as_deref() == Some("status") {
                        let mut updated = old.clone();
                        updated["status"] = o["status"].clone();
                        o = updated;
                    } else if let Some(s) = old
                        .get("status")
                        .filter(|_| info.crd.is_none_or(|c| c.status))
                    {
                        o["status"] = s.clone();
                    }
                }
                o
            }
            _ => unreachable!("verbs are matched above"),
        };
        // A custom resource with a status subresource starts without one
        // (the create's status is dropped, as the real server's strategy).
        if existing.is_none()
            && info.crd.is_some_and(|c| c.status)
            && let Some(o) = object.as_object_mut()
        {
            o.remove("status");
        }
        // Decoding against the schema: types, unknown fields.
        let mut warnings = Vec::new();
        if let Some(r) = root {
            let strict = q.get("fieldValidation").map(String::as_str) == Some("Strict");
            let mut problems = Vec::new();
            decode_as(info, r, &mut object, !strict, &mut problems);
            if let Some(resp) = decode_failure(info, &problems, strict) {
                return resp;
            }
            // Warn (the default) names each dropped field; Ignore drops
            // them silently.
            let ignore = q.get("fieldValidation").map(String::as_str) == Some("Ignore");
            for p in problems {
                if let validate::DecodeProblem::UnknownField(f) = p
                    && !ignore
                {
                    warnings.push(format!("unknown field \"{f}\""));
                }
            }
        }
        if info.kind == "Secret" {
            for (k, v) in object["data"].as_object().into_iter().flatten() {
                if !v.as_str().is_some_and(is_base64) {
                    return status_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!(
                            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 0 (data[{k}])"
                        ),
                    );
                }
            }
        }
        let next_ip = store.next_ip;
        defaults(&mut store, info, &mut object, existing.as_ref());
        // Admission: owner references need rights on the owner's finalizers.
        if let Some(resp) =
            self.admit_owner_references(&store, user, info, ns, &object, existing.as_ref())
        {
            return resp;
        }
        if let Some(resp) = self.admit_rbac_escalation(&store, user, info, ns, &object) {
            return resp;
        }
        if info.kind == "Pod"
            && let Some(problem) =
                controllers::pod_security_problem(&store_view(&store), ns, &object)
        {
            return status_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("pods \"{name}\" is forbidden: {problem}"),
            );
        }
        object["apiVersion"] = json!(info.api_version());
        object["kind"] = json!(info.kind);
        let mut causes = validate::validate(info.kind, &object, existing.as_ref());
        // ValidateObjectMetaUpdate: an object being deleted takes no new
        // finalizers.
        if let Some(old) = existing.as_ref()
            && old["metadata"].get("deletionTimestamp").is_some()
        {
            let had: Vec<&Value> = old["metadata"]["finalizers"]
                .as_array()
                .map(|f| f.iter().collect())
                .unwrap_or_default();
            let mut extra: Vec<&str> = object["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| !had.contains(f))
                .filter_map(Value::as_str)
                .collect();
            extra.sort_unstable();
            extra.dedup();
            if !extra.is_empty() {
                let listed: Vec<String> = extra.iter().map(|f| format!("{f:?}")).collect();
                causes.push(validate::Cause {
                    reason: "FieldValueForbidden",
                    field: "metadata.finalizers".into(),
                    message: format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                        listed.join(", ")
                    ),
                });
            }
        }
        if let Some(c) = info.crd {
            crd::validate(&object, &c.schema, "", existing.as_ref(), &mut causes);
        }
        if info.kind == "CustomResourceDefinition" && info.crd.is_none() {
            causes.extend(crd::check(&object, existing.as_ref()));
            object["status"] = crd::status_of(&object, existing.as_ref(), &now);
        }
        if !causes.is_empty() {
            return self.invalid(info, &name, causes);
        }
        // Admission policies (CEL), after the object is known to be valid.
        let policy_warnings = match admission_policy::admit(
            &store,
            info,
            &admission_policy::Attributes {
                operation: if existing.is_none() {
                    "CREATE"
                } else {
                    "UPDATE"
                },
                group: info.group,
                version: info.version,
                kind: info.kind,
                resource: info.plural,
                subresource: target.subresource.as_deref().unwrap_or_default(),
                namespace: ns,
                name: &name,
                object: &object,
                old_object: existing.as_ref(),
                namespace_object: store.objects.get(&(
                    (String::from("api/v1"), String::from("namespaces")),
                    String::new(),
                    ns.to_string(),
                )),
                user: Some(user),
                dry_run: q.contains_key("dryRun"),
            },
        ) {
            Ok(w) => w,
            Err(resp) => return *resp,
        };
        warnings.extend(policy_warnings);
        if !is_apply {
            apply::record_update(
                existing.as_ref(),
                &mut object,
                &manager,
                &info.api_version(),
                &now,
                root,
            );
        }
        // An object being deleted whose last finalizer went is removed.
        let deleting = object["metadata"].get("deletionTimestamp").is_some();
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        let code = if existing.is_none() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        if existing.is_some() && existing.as_ref() == Some(&object) {
            return respond(StatusCode::OK, &object);
        }
        if events_view {
            object = events::to_core(&object);
        }
        let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
        let stored = if dry_run {
            // Validated and admitted, but neither stored nor watched; an IP
            // it was given is not taken either.
            let stamped = self.stamp(
                &mut store,
                &prefix,
                info.plural,
                ns,
                object,
                stored_existing.as_ref(),
                true,
            );
            store.next_ip = next_ip;
            stamped
        } else {
            self.commit(
                &mut store,
                &prefix,
                info.plural,
                ns,
                object,
                stored_existing.as_ref(),
            )
        };
        let stored = served_as(info, stored);
        if deleting && finalizers == 0 && !dry_run {
            self.remove(&mut store, &key);
        }
        let mut resp = respond(code, &stored);
        for w in warnings {
            if let Ok(v) =
                http::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\"")))
            {
                resp.headers_mut().append("warning", v);
            }
        }
        resp
    }

    fn conflict_modified(&self, info: &KindInfo, name: &str) -> Response<FakeBody> {
        respond(
            StatusCode::CONFLICT,
            &status_body(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    info.group_label()
                ),
                json!({"name": name, "group": info.group, "kind": info.plural}),
            ),
        )
    }

    fn invalid(
        &self,
        info: &KindInfo,
        name: &str,
        causes: Vec<validate::Cause>,
    ) -> Response<FakeBody> {
        self.invalid_kind(info.group, info.kind, name, causes)
    }

    /// 422 Invalid for `kind` in `group`, with one cause per field.
    fn invalid_kind(
        &self,
        group: &str,
        kind_name: &str,
        name: &str,
        causes: Vec<validate::Cause>,
    ) -> Response<FakeBody> {
        let kind = if group.is_empty() {
            kind_name.to_string()
        } else {
            format!("{kind_name}.{group}")
        };
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let message = if parts.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", parts[0])
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", parts.join(", "))
        };
        respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            &status_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                message,
                json!({
                    "name": name, "group": group, "kind": kind_name,
                    "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
                }),
            ),
        )
    }

    fn admit_owner_references(
        &self,
        store: &Store,
        user: &User,
        info: &KindInfo,
        ns: &str,
        object: &Value,
        old: Option<&Value>,
    ) -> Option<Response<FakeBody>> {
        let old_refs = old
            .map(|o| o["metadata"]["ownerReferences"].clone())
            .unwrap_or(Value::Null);
        for r in object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if r["blockOwnerDeletion"] != true {
                continue;
            }
            let unchanged = old_refs
                .as_array()
                .is_some_and(|refs| refs.iter().any(|o| o == r));
            if unchanged {
                continue;
            }
            let api = r["apiVersion"].as_str().unwrap_or_default();
            let group = api.split_once('/').map(|(g, _)| g).unwrap_or("");
            let attrs = rbac::Attributes {
                verb: "update".into(),
                group: group.to_string(),
                resource: plural_of(r["kind"].as_str().unwrap_or_default()),
                subresource: Some("finalizers".into()),
                namespace: info.namespaced.then(|| ns.to_string()),
                name: r["name"].as_str().map(str::to_string),
            };
            if !self.policy_allows(store, user, &attrs) {
                return Some(status_error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "{} \"{}\" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: {}, {r}",
                        info.group_label(),
                        object["metadata"]["name"].as_str().unwrap_or_default(),
                        attrs.denial(user)
                    ),
                ));
            }
        }
        None
    }

    fn admit_rbac_escalation(
        &self,
        store: &Store,
        user: &User,
        info: &KindInfo,
        ns: &str,
        object: &Value,
    ) -> Option<Response<FakeBody>> {
        if user.is_admin() || info.group != "rbac.authorization.k8s.io" {
            return None;
        }
        let policy = policy_of(store);
        let scope = info.namespaced.then_some(ns);
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let may = |verb: &str, resource: &str, target: &str| {
            policy.allows(
                user,
                &rbac::Attributes {
                    verb: verb.into(),
                    group: "rbac.authorization.k8s.io".into(),
                    resource: resource.into(),
                    subresource: None,
                    namespace: scope.map(str::to_string),
                    name: Some(target.to_string()),
                },
            )
        };
        let rules: Vec<Value> = match info.kind {
            "Role" | "ClusterRole" => {
                if may("escalate", info.plural, name) {
                    return None;
                }
                object["rules"].as_array().cloned().unwrap_or_default()
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role_name = object["roleRef"]["name"].as_str().unwrap_or_default();
                let role_kind = object["roleRef"]["kind"].as_str().unwrap_or_default();
                let plural = if role_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", plural, role_name) {
                    return None;
                }
                let role = store.objects.iter().find(|((k, n, nm), _)| {
                    k.1 == plural && nm == role_name && (plural == "clusterroles" || n == ns)
                });
                role.map(|(_, r)| r["rules"].as_array().cloned().unwrap_or_default())
                    .unwrap_or_default()
            }
            _ => return None,
        };
        match policy.covers(user, scope, &rules) {
            Ok(()) => None,
            Err(missing) => Some(status_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{missing}",
                    info.group_label(),
                    user.name,
                    user.groups
                ),
            )),
        }
    }

    /// DELETE with DeleteOptions (body or query): `propagationPolicy`
    /// Background (the default: the garbage collector removes dependents
    /// afterwards), Orphan (dependents lose their owner reference and stay)
    /// or Foreground (the owner is held with the `foregroundDeletion`
    /// finalizer until its dependents are gone).
    fn delete_request(
        &self,
        target: &Target,
        ns: &str,
        q: &BTreeMap<String, String>,
        body: &[u8],
    ) -> Response<FakeBody> {
        let name = target.name.as_deref().expect("delete has a name");
        let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return status_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("DeleteOptions: {e}"),
                    );
                }
            }
        };
        let policy = options["propagationPolicy"]
            .as_str()
            .map(str::to_string)
            .or_else(|| q.get("propagationPolicy").cloned())
            .unwrap_or_else(|| "Background".into());
        if !["Background", "Orphan", "Foreground"].contains(&policy.as_str()) {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            );
        }
        let key = Self::key(&target.info.storage_prefix(), target.info.plural, ns, name);
        let mut store = self.inner.store.lock().expect("store");
        let Some(current) = store.objects.get(&key).cloned() else {
            drop(store);
            return not_found(target.info, name);
        };
        let uid = current["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let have = current["metadata"][field].as_str().unwrap_or_default();
            if let Some(want) = options["preconditions"][field].as_str()
                && want != have
            {
                drop(store);
                return status_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}",
                        target.info.group_label()
                    ),
                );
            }
        }
        if target.info.kind == "Namespace"
            && target.info.crd.is_none()
            && SYSTEM_NAMESPACES.contains(&name)
        {
            drop(store);
            return status_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            );
        }
        let grace = match options["gracePeriodSeconds"]
            .as_i64()
            .map(Ok)
            .or_else(|| q.get("gracePeriodSeconds").map(|g| g.parse::<i64>()))
        {
            None => None,
            Some(Ok(g)) if g >= 0 => Some(g),
            Some(_) => {
                drop(store);
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "DeleteOptions.meta.k8s.io \"\" is invalid: gracePeriodSeconds: Invalid value: must be a non-negative integer".into(),
                );
            }
        };
        let dry_run = q.get("dryRun").is_some_and(|d| d == "All")
            || options["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "All"));
        if dry_run {
            // What the delete would answer, with nothing deleted or marked.
            let mut answer = current.clone();
            let foreground =
                policy == "Foreground" && store.objects.values().any(|o| owned_by(o, &uid));
            let pod_grace = if target.info.kind == "Pod" && target.info.crd.is_none() {
                termination::grace_period(&current, grace)
            } else {
                0
            };
            if foreground {
                let mut f = answer["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !f.contains(&json!(FOREGROUND)) {
                    f.push(json!(FOREGROUND));
                }
                answer["metadata"]["finalizers"] = json!(f);
            }
            let held = answer["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if pod_grace > 0 && current["metadata"].get("deletionTimestamp").is_none() {
                answer["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                answer["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace);
            } else if held && current["metadata"].get("deletionTimestamp").is_none() {
                mark_as_deleting(&mut answer);
            }
            return respond(StatusCode::OK, &served_as(target.info, answer));
        }
        match policy.as_str() {
            "Orphan" => {
                let dependents: Vec<Key> = store
                    .objects
                    .iter()
                    .filter(|(_, o)| owned_by(o, &uid))
                    .map(|(k, _)| k.clone())
                    .collect();
                for dk in dependents {
                    let mut o = store.objects[&dk].clone();
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != uid.as_str());
                        if refs.is_empty() {
                            o["metadata"]
                                .as_object_mut()
                                .expect("metadata")
                                .remove("ownerReferences");
                        }
                    }
                    store.rv += 1;
                    o["metadata"]["resourceVersion"] = json!(store.rv.to_string());
                    store.objects.insert(dk.clone(), o.clone());
                    self.emit(&mut store, dk.0.clone(), &dk.1, "MODIFIED", o, None);
                }
            }
            "Foreground" if store.objects.values().any(|o| owned_by(o, &uid)) => {
                let mut held = current.clone();
                let finalizers = held["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !finalizers.contains(&json!(FOREGROUND)) {
                    let mut f = finalizers;
                    f.push(json!(FOREGROUND));
                    held["metadata"]["finalizers"] = json!(f);
                }
                if held["metadata"].get("deletionTimestamp").is_none() {
                    mark_as_deleting(&mut held);
                }
                store.rv += 1;
                held["metadata"]["resourceVersion"] = json!(store.rv.to_string());
                store.objects.insert(key.clone(), held.clone());
                self.emit(
                    &mut store,
                    key.0.clone(),
                    &key.1,
                    "MODIFIED",
                    held.clone(),
                    None,
                );
                self.inner.changed.notify_one();
                return respond(StatusCode::OK, &held);
            }
            _ => {}
        }
        let gone = self
            .delete_key_with(&mut store, &key, grace)
            .expect("present above");
        respond(StatusCode::OK, &served_as(target.info, gone))
    }

    /// `kubectl auth can-i`: a SelfSubjectAccessReview for the caller.
    fn review(
        &self,
        target: &Target,
        user: &User,
        verb: &str,
        body: &[u8],
        content_type: &str,
    ) -> Response<FakeBody> {
        if verb != "create" {
            return status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{} only supports create", target.info.plural),
            );
        }
        let decoded = if content_type == "application/vnd.kubernetes.protobuf" {
            protobuf::self_subject_access_review(body)
        } else {
            serde_json::from_slice(body).map_err(|e| e.to_string())
        };
        let review: Value = match decoded {
            Ok(v) => v,
            Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e),
        };
        let a = &review["spec"]["resourceAttributes"];
        let attrs = rbac::Attributes {
            verb: a["verb"].as_str().unwrap_or_default().to_string(),
            group: a["group"].as_str().unwrap_or_default().to_string(),
            resource: a["resource"].as_str().unwrap_or_default().to_string(),
            subresource: a["subresource"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            namespace: a["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            name: a["name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        };
        let allowed = {
            let store = self.inner.store.lock().expect("store");
            self.policy_allows(&store, user, &attrs)
        };
        let mut out = review.clone();
        out["status"] =
            json!({"allowed": allowed, "reason": if allowed { "RBAC: allowed" } else { "" }});
        respond(StatusCode::CREATED, &out)
    }

    fn list(
        &self,
        target: &Target,
        q: &BTreeMap<String, String>,
        table: Option<tables::TableRequest>,
    ) -> Response<FakeBody> {
        let store = self.inner.store.lock().expect("store");
        let labels = q.get("labelSelector").map(String::as_str);
        let fields = stored_field_selector(target.info, q.get("fieldSelector"));
        let fields = fields.as_deref();
        let storage = target.info.storage_prefix();
        let items: Vec<(Value, Value)> = store
            .objects
            .iter()
            .filter(|((k, ns, _), o)| {
                k.0 == storage
                    && k.1 == target.info.plural
                    && target.namespace.as_ref().is_none_or(|n| n == ns)
                    && selected(labels, fields, o)
            })
            .map(|(_, o)| (o.clone(), served_as(target.info, o.clone())))
            .collect();
        // Pages: `limit` items, `continue` is the offset.
        let offset: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let page: Vec<(Value, Value)> = items.iter().skip(offset).take(limit).cloned().collect();
        let mut metadata = json!({"resourceVersion": store.rv.to_string()});
        if offset.saturating_add(limit) < items.len() {
            metadata["continue"] = json!((offset + limit).to_string());
        }
        if let Some(t) = table {
            return respond(
                StatusCode::OK,
                &tables::table(target.info, &page, metadata, t, true),
            );
        }
        let page: Vec<Value> = page.into_iter().map(|(_, served)| served).collect();
        let body = json!({
            "kind": format!("{}List", target.info.kind),
            "apiVersion": target.info.api_version(),
            "metadata": metadata,
            "items": page,
        });
        respond(StatusCode::OK, &body)
    }

    fn watch(
        &self,
        target: &Target,
        q: BTreeMap<String, String>,
        table: Option<tables::TableRequest>,
    ) -> Response<FakeBody> {
        let from: Option<u64> = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .and_then(|v| v.parse().ok());
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(290));
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let labels = q.get("labelSelector").cloned();
        let fields = stored_field_selector(target.info, q.get("fieldSelector"));
        let kind = (target.info.storage_prefix(), target.info.plural.to_string());
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Value>(self.inner.options.watch_buffer.max(1));
        {
            let store = self.inner.store.lock().expect("store");
            let mut pending: Vec<Value> = Vec::new();
            match from {
                Some(rv) if rv < store.compacted_rv => {
                    let status = status_body(
                        StatusCode::GONE,
                        "Expired",
                        format!(
                            "too old resource version: {rv} ({})",
                            store.compacted_rv + 1
                        ),
                        Value::Null,
                    );
                    pending.push(json!({"type": "ERROR", "object": status}));
                    drop(store);
                    let line: Vec<u8> = pending
                        .iter()
                        .flat_map(|v| format!("{v}\n").into_bytes())
                        .collect();
                    return Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(line)).boxed())
                        .expect("watch response");
                }
                Some(rv) => {
                    for e in store.history.iter().filter(|e| e.rv > rv && e.kind == kind) {
                        if target.namespace.as_ref().is_none_or(|n| *n == e.namespace)
                            && let Some(event_type) =
                                e.seen_as(labels.as_deref(), fields.as_deref())
                        {
                            pending.push(json!({"type": event_type, "object": served_as(target.info, e.object.clone())}));
                        }
                    }
                }
                None => {
                    for ((k, ns, _), o) in &store.objects {
                        if *k == kind
                            && target.namespace.as_ref().is_none_or(|n| n == ns)
                            && selected(labels.as_deref(), fields.as_deref(), o)
                        {
                            pending.push(json!({"type": "ADDED", "object": served_as(target.info, o.clone())}));
                        }
                    }
                }
            }
            if pending.len() >= self.inner.options.watch_buffer.max(1) {
                // Too far behind to catch up within the buffer: start over.
                let status = status_body(
                    StatusCode::GONE,
                    "Expired",
                    "too many events to replay; re-list".into(),
                    Value::Null,
                );
                pending = vec![json!({"type": "ERROR", "object": status})];
            }
            for p in pending {
                let _ = tx.try_send(p);
            }
            // Registered under the store lock: no event falls between.
            self.inner.watchers.lock().expect("watchers").push(Watcher {
                kind: kind.clone(),
                namespace: target.namespace.clone(),
                labels: labels.clone(),
                fields: fields.clone(),
                view: target.info,
                tx: tx.clone(),
            });
        }
        let this = self.clone();
        let info = target.info;
        let bookmark_every = self.inner.options.bookmark_interval;
        drop(tx);
        let stream = async_stream(move |out| async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(bookmark_every);
            tick.tick().await;
            let mut first_table = true;
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    line = rx.recv() => match line {
                        Some(mut line) => {
                            if let Some(t) = table
                                && line["type"] != "ERROR"
                                && line["type"] != "BOOKMARK"
                            {
                                line["object"] = tables::watch_row(info, line["object"].take(), t, first_table);
                                first_table = false;
                            }
                            if out.send(line).await.is_err() {
                                return;
                            }
                        }
                        // The server cut this watcher off (it lagged).
                        None => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let rv = this.inner.store.lock().expect("store").rv;
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "kind": info.kind, "apiVersion": info.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()},
                        }});
                        if out.send(bookmark).await.is_err() {
                            return;
                        }
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

/// A stored object as the resource it was asked through shows it.
fn served_as(info: &KindInfo, object: Value) -> Value {
    if events::is_events_view(&info.prefix(), info.plural) {
        events::to_events(&object)
    } else if let Some(c) = info.crd {
        // Conversion `None`: only the apiVersion changes; defaults are
        // applied on read as well.
        let mut object = object;
        if object.is_object() {
            object["apiVersion"] = json!(info.api_version());
            crd::default(&mut object, &c.schema);
        }
        object
    } else {
        object
    }
}

/// A request's field selector in the names of the stored form.
fn stored_field_selector(info: &KindInfo, selector: Option<&String>) -> Option<String> {
    let selector = selector?;
    Some(if events::is_events_view(&info.prefix(), info.plural) {
        events::core_field_selector(selector)
    } else {
        selector.clone()
    })
}

fn store_view(store: &Store) -> View<'_> {
    View { store }
}

/// Decoding a write: against the built-in schema, or for a custom
/// resource its metadata as `ObjectMeta` and the rest pruned by its CRD's
/// schema ([`crd::prune`]).
fn decode_as(
    info: &KindInfo,
    root: schema::Node<'_>,
    value: &mut Value,
    drop_unknown: bool,
    problems: &mut Vec<validate::DecodeProblem>,
) {
    let Some(c) = info.crd else {
        validate::decode(value, root, "", drop_unknown, problems);
        return;
    };
    if let Some(meta) = root.field("metadata")
        && let Some(m) = value.get_mut("metadata")
    {
        validate::decode(m, meta, "metadata", drop_unknown, problems);
    }
    let mut unknown = Vec::new();
    crd::prune(value, &c.schema, "", true, &mut unknown);
    problems.extend(
        unknown
            .into_iter()
            .map(validate::DecodeProblem::UnknownField),
    );
}

fn decode_failure(
    info: &KindInfo,
    problems: &[validate::DecodeProblem],
    strict: bool,
) -> Option<Response<FakeBody>> {
    for p in problems {
        if let validate::DecodeProblem::WrongType {
            path,
            expected,
            found,
        } = p
        {
            return Some(status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "{} in version \"{}\" cannot be handled as a {}: json: cannot unmarshal {found} into Go struct field .{path} of type {expected}",
                    info.kind, info.version, info.kind
                ),
            ));
        }
    }
    if strict {
        let unknown: Vec<String> = problems
            .iter()
            .filter_map(|p| match p {
                validate::DecodeProblem::UnknownField(f) => Some(format!("unknown field \"{f}\"")),
                _ => None,
            })
            .collect();
        if !unknown.is_empty() {
            return Some(status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    info.kind,
                    info.version,
                    info.kind,
                    unknown.join(", ")
                ),
            ));
        }
    }
    None
}

fn apply_conflict(conflicts: &[apply::Conflict]) -> Response<FakeBody> {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                "field": apply::display(&c.path),
            })
        })
        .collect();
    let listed: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "- conflict with \"{}\" using {}: {}",
                c.manager,
                c.api_version,
                apply::display(&c.path)
            )
        })
        .collect();
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            conflicts[0].manager,
            conflicts[0].api_version,
            apply::display(&conflicts[0].path)
        )
    } else {
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            listed.join("\n")
        )
    };
    respond(
        StatusCode::CONFLICT,
        &status_body(
            StatusCode::CONFLICT,
            "Conflict",
            message,
            json!({"causes": causes}),
        ),
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
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n")))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(labels_match("app=web,tier", &labels));
        assert!(labels_match("app in (web,api),!missing", &labels));
        assert!(labels_match("app notin (api)", &labels));
        assert!(!labels_match("app!=web", &labels));
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
        assert_eq!(
            selected_name(Some("metadata.name=app-sluice")),
            Some("app-sluice".into())
        );
        assert_eq!(base64(b"token"), "dG9rZW4=");
        assert!(is_base64("dG9rZW4="));
        assert!(!is_base64("not base64!"));
    }
}
