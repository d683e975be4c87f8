//! From Gateway API objects (as JSON) to the proxy's [`Config`] and the
//! statuses to write. Pure: no I/O, so every rule is unit-tested here.
//!
//! How an `HTTPRoute` or a `GRPCRoute` maps onto Sluice routes (the
//! decisions the Gateway API leaves to an implementation are in
//! `docs/gateway-api.md`):
//!
//! - **One Sluice route per rule**, named `NS/NAME/RULE_INDEX` for an
//!   HTTPRoute and `grpc:NS/NAME/RULE_INDEX` for a GRPCRoute (the `route`
//!   label of every metric), on one port, with `hosts` the union, over
//!   every parentRef and listener of that port the route attaches to, of
//!   the intersections of the route's and the listener's hostnames, and
//!   `matches` the rule's matches (alternatives). A parentRef selecting
//!   listeners of two ports is refused, and so is a parentRef on another
//!   port than the route's first: a route name is one port.
//! - **Attachment and `attachedRoutes`.** A route attaches to the HTTP and
//!   HTTPS listeners its parentRefs select and whose `allowedRoutes` admit
//!   it; only HTTP listeners are served. A listener's `attachedRoutes`
//!   counts each route accepted on it once, served or not (an HTTPS
//!   listener, a port the proxy does not listen on yet), whatever the
//!   listener's own conditions, as the Gateway API asks.
//! - **Matches.** HTTPRoute: path `Exact` → `path_exact`; `PathPrefix /p`
//!   (or `/p/`) → `path_segments /p`, the Gateway API's element-wise
//!   prefix (`/p` and `/p/x`, never `/px`), ranked by the proxy as a
//!   prefix of its length, below an exact path (`PathPrefix /` is the
//!   plain `path_prefix /`); `method` → `methods`; `Exact` header and
//!   query-parameter matches → `headers` / `query`, of a repeated name
//!   (header names case-insensitively) only the first, as the Gateway
//!   API says. GRPCRoute: method `Exact` with service and method →
//!   `path_exact /SERVICE/METHOD`, service alone → `path_segments
//!   /SERVICE`, no method match → `/`; header matches as above; the
//!   backends are spoken to in HTTP/2 (`protocol: http2`).
//!   `RegularExpression` paths, headers, query parameters and gRPC
//!   methods, and a gRPC method without a service (`/*/METHOD` is not a
//!   path match), are refused.
//! - **Rule order.** A match an earlier rule of the same route already has
//!   is dropped from the later rule (the Gateway API gives it to the
//!   earlier one). A rule left without matches receives no request and
//!   makes no Sluice route. Matches of one Sluice route are in rule order
//!   and routes oldest first (creation time, then namespace/name), so the
//!   proxy's last tie-break (config order) is the Gateway API's.
//! - **Between routes** the proxy's precedence decides (host, exact path,
//!   longest prefix, method, more headers, more query parameters, then
//!   the older route). A match identical to an older route's on the same
//!   port and hostnames stays the older route's: the newer route is
//!   accepted and served with its other matches (its status says how
//!   many were the older's). An HTTPRoute and a GRPCRoute whose hostnames
//!   intersect on one port: the older is accepted, the newer gets
//!   `Accepted: False`, reason `Conflicted` (the GRPCRoute spec).
//! - **Backends.** One backendRef is the stable; with two, the first is
//!   the stable and the second the canary, at `weight₂ / (weight₁ +
//!   weight₂)` rounded to the nearest basis point (0.01 %, the proxy's
//!   unit), then split exactly; every weight 0 makes the rule answer 500.
//!   More than two backendRefs are refused: Sluice splits
//!   a stable and a canary, the pair a progressive release moves.
//! - **Invalid backendRefs.** A backendRef that is not a core Service
//!   (`InvalidKind`), in another namespace (`RefNotPermitted`: ReferenceGrants
//!   are not read) or whose Service or port does not exist, or has no
//!   cluster IP (`BackendNotFound`) makes its rule a `direct_response`
//!   500 (the Gateway API's answer for the requests it would get; the
//!   proxy has no arm that answers 500, so a weighted rule is answered
//!   500 whole unless the invalid backendRef has weight 0, which gets no
//!   request); the route's other rules are served, and `ResolvedRefs` is
//!   `False` with the first reason and every message. An invalid
//!   `RequestMirror` backend drops the mirror (a copy changes no answer).
//! - **A/B rules.** A rule with one backendRef, no mirror, whose backend
//!   is the canary of a weighted rule of the same route with the same
//!   header modifiers and timeout (and no mirror), joins that rule: its
//!   matches, each with its own conditions, become matches of the
//!   weighted rule's Sluice route with `backend: canary`, so its requests
//!   are counted on that `route` as `decision="match"` and the precedence
//!   is what the Gateway API says (each keeps its own header count). Any
//!   other rule is served as its own route.
//! - **Filters** (rule level): `RequestHeaderModifier` and
//!   `ResponseHeaderModifier` → the route's `request_headers` /
//!   `response_headers`; a field the proxy owns (`Host`, `Content-Length`,
//!   `Transfer-Encoding`, hop-by-hop and forwarding fields, `X-Sluice-*`)
//!   is refused naming the field, and so is a name both set and removed;
//!   in `set` and in `add` the first entry of a name counts.
//!   `RequestMirror` (on a rule with one backendRef) is the route's
//!   `mirror` to the mirrored Service, at the filter's percent. Other
//!   filters, a second filter of one type and backendRef-level filters
//!   are refused.
//! - **Timeouts** (HTTPRoute): `timeouts.backendRequest` (else
//!   `timeouts.request`) is the route's `timeouts.request`.
//! - Anything the proxy cannot serve as written refuses the whole route
//!   for that parent: `Accepted: False`, reason `UnsupportedValue`, a
//!   message naming the object's field (`spec.rules[1].filters[0].
//!   requestHeaderModifier.set[0].value`); none of its rules is served.
//! - **Cost.** Each route's Sluice routes are checked alone (so an error
//!   names its field), identical matches are found in a map, and the
//!   whole config is checked once at the end: linear in the routes (300
//!   routes of 16 rules of 4 matches: under a second in a debug build).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::config::{Config, GRPC_NAME_PREFIX, RouteConfig};

pub const GROUP: &str = "gateway.networking.k8s.io";

/// Where the proxy listens: the bind address, the admin listener and the
/// Gateway listener ports, fixed at start (the lowest is `listen`).
#[derive(Debug, Clone)]
pub struct Layout {
    pub bind: String,
    pub admin_listen: String,
    pub ports: BTreeSet<u16>,
}

/// What the controller read.
#[derive(Debug, Default)]
pub struct Inputs {
    pub controller: String,
    pub classes: Vec<Value>,
    pub gateways: Vec<Value>,
    pub routes: Vec<Value>,
    pub services: Vec<Value>,
    /// GRPCRoutes (empty when the API server does not serve them).
    pub grpc_routes: Vec<Value>,
}

/// The config to serve and the statuses to write (conditions without
/// `lastTransitionTime`: the writer keeps an unchanged condition's time).
#[derive(Debug)]
pub struct Outcome {
    pub config: Config,
    /// GatewayClass name → conditions.
    pub classes: BTreeMap<String, Vec<Value>>,
    /// (namespace, name) → Gateway status (conditions and listeners).
    pub gateways: BTreeMap<(String, String), Value>,
    /// (namespace, name) → this controller's `status.parents` entries.
    pub routes: BTreeMap<(String, String), Vec<Value>>,
    /// The same for GRPCRoutes.
    pub grpc_routes: BTreeMap<(String, String), Vec<Value>>,
}

/// The Gateway listener ports of `inputs` the proxy should listen on.
pub fn wanted_ports(inputs: &Inputs) -> BTreeSet<u16> {
    let classes = our_classes(inputs);
    inputs
        .gateways
        .iter()
        .filter(|g| classes.contains(str_at(g, "/spec/gatewayClassName")))
        .flat_map(|g| listeners(g).into_iter())
        .filter(|l| l.protocol == "HTTP")
        .map(|l| l.port)
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn generation(v: &Value) -> i64 {
    v.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn key(v: &Value) -> (String, String) {
    (
        str_at(v, "/metadata/namespace").to_string(),
        str_at(v, "/metadata/name").to_string(),
    )
}

/// A condition (without `lastTransitionTime`).
pub fn condition(kind: &str, ok: bool, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    })
}

fn our_classes(inputs: &Inputs) -> BTreeSet<&str> {
    inputs
        .classes
        .iter()
        .filter(|c| str_at(c, "/spec/controllerName") == inputs.controller)
        .map(|c| str_at(c, "/metadata/name"))
        .collect()
}

struct Listener {
    name: String,
    port: u16,
    protocol: String,
    hostname: Option<String>,
    from: String,
}

fn listeners(gateway: &Value) -> Vec<Listener> {
    gateway
        .pointer("/spec/listeners")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|l| Listener {
                    name: str_at(l, "/name").to_string(),
                    port: l["port"].as_u64().unwrap_or(0) as u16,
                    protocol: str_at(l, "/protocol").to_string(),
                    hostname: l["hostname"].as_str().map(str::to_string),
                    from: match str_at(l, "/allowedRoutes/namespaces/from") {
                        "" => "Same".to_string(),
                        f => f.to_string(),
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A refusal: the reason (a Gateway API reason) and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

fn unsupported(message: String) -> Refusal {
    Refusal {
        reason: "UnsupportedValue",
        message,
    }
}

/// A backendRef: a Service and port, and once resolved its URL.
#[derive(Debug, Clone, Default, PartialEq)]
struct Backend {
    namespace: String,
    name: String,
    port: u16,
    weight: u64,
    url: String,
}

impl Backend {
    fn same_service(&self, other: &Backend) -> bool {
        self.name == other.name && self.port == other.port
    }
}

/// Which kind of route a plan was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn kind(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
        }
    }

    /// The Sluice route name of rule `rule` of route `ns/name`.
    fn route_name(self, ns: &str, name: &str, rule: usize) -> String {
        match self {
            Self::Http => format!("{ns}/{name}/{rule}"),
            Self::Grpc => format!("{GRPC_NAME_PREFIX}{ns}/{name}/{rule}"),
        }
    }
}

/// How a match compares the path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PathMatch {
    Exact(String),
    /// Whole path elements (the proxy's `path_segments`): `/p` is `/p` or
    /// `/p/…`, never `/px`; `/` is any path.
    Segments(String),
}

/// A name/value condition (a header or query-parameter match, or a
/// modifier entry) and its index in the object, to name it in a refusal.
#[derive(Debug, Clone)]
struct Cond {
    name: String,
    value: String,
    index: usize,
}

impl PartialEq for Cond {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.value) == (&other.name, &other.value)
    }
}

/// What makes two matches the same, whatever their origin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MatchKey {
    path: PathMatch,
    method: Option<String>,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

/// One match of a rule, as the proxy's `RouteMatch` will carry it.
#[derive(Debug, Clone)]
struct Match {
    path: PathMatch,
    method: Option<String>,
    /// Names lower-cased; sorted by name and value.
    headers: Vec<Cond>,
    /// Sorted by name and value.
    query: Vec<Cond>,
    /// `spec.rules[at.0].matches[at.1]` (for a rule without matches, 0).
    at: (usize, usize),
    /// An A/B match joined to the weighted rule (`backend: canary`).
    to_canary: bool,
}

impl Match {
    fn key(&self) -> MatchKey {
        let pairs = |l: &[Cond]| {
            l.iter()
                .map(|c| (c.name.clone(), c.value.clone()))
                .collect()
        };
        MatchKey {
            path: self.path.clone(),
            method: self.method.clone(),
            headers: pairs(&self.headers),
            query: pairs(&self.query),
        }
    }

    /// A match on any path without other conditions (the proxy's plain
    /// `path_prefix: /`).
    fn matches_everything(&self) -> bool {
        self.path == PathMatch::Segments("/".to_string())
            && self.method.is_none()
            && self.headers.is_empty()
            && self.query.is_empty()
            && !self.to_canary
    }
}

/// A header modifier filter (names as written; for `set` and `add` the
/// first entry of a name, case-insensitively, as the Gateway API says).
#[derive(Debug, Clone, Default, PartialEq)]
struct Modifier {
    /// `spec.rules[i].filters[filter]`.
    filter: usize,
    set: Vec<Cond>,
    add: Vec<Cond>,
    remove: Vec<String>,
}

impl Modifier {
    /// The same changes, wherever they are written.
    fn same_changes(a: &Option<Modifier>, b: &Option<Modifier>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => a.set == b.set && a.add == b.add && a.remove == b.remove,
            _ => false,
        }
    }
}

/// Where a rule sends its requests.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// The stable and maybe a canary at `canary_bp` (URLs resolved).
    Backends {
        stable: Backend,
        canary: Option<Backend>,
        canary_bp: u32,
    },
    /// A backendRef is not valid: the proxy answers 500 itself, as the
    /// Gateway API asks for the requests an invalid backendRef would get.
    Error500,
}

/// A backendRef that does not resolve: the `ResolvedRefs` reason and why.
#[derive(Debug, Clone, PartialEq)]
struct RefIssue {
    reason: &'static str,
    message: String,
}

/// One rule as read; later, with its A/B rules joined, one Sluice route
/// (per port) to make.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    rule: usize,
    matches: Vec<Match>,
    target: Target,
    /// The mirrored Service and percent, and the filter's index.
    mirror: Option<(Backend, u64, usize)>,
    /// The timeout and the field it was read from.
    timeout: Option<(String, &'static str)>,
    request_headers: Option<Modifier>,
    response_headers: Option<Modifier>,
}

impl PartialEq for Match {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key() && self.at == other.at && self.to_canary == other.to_canary
    }
}

impl Plan {
    /// Whether it can be an A/B rule: one backendRef and no mirror.
    fn ab_backend(&self) -> Option<&Backend> {
        match &self.target {
            Target::Backends {
                stable,
                canary: None,
                ..
            } if self.mirror.is_none() => Some(stable),
            _ => None,
        }
    }

    /// Whether A/B requests joined into it see exactly what `ab` says:
    /// the same header modifiers and timeout, and no mirror.
    fn same_treatment(&self, ab: &Plan) -> bool {
        self.mirror.is_none()
            && Modifier::same_changes(&self.request_headers, &ab.request_headers)
            && Modifier::same_changes(&self.response_headers, &ab.response_headers)
            && self.timeout.as_ref().map(|t| &t.0) == ab.timeout.as_ref().map(|t| &t.0)
    }
}

/// A backendRef as written: a Service in the route's namespace, or the
/// `ResolvedRefs` issue (`InvalidKind`, `RefNotPermitted`); `Err` is a
/// refusal of the route (a Service backendRef without a port).
fn backend_of(r: &Value, route_ns: &str, at: &str) -> Result<Result<Backend, RefIssue>, Refusal> {
    let group = str_at(r, "/group");
    let kind = match str_at(r, "/kind") {
        "" => "Service",
        k => k,
    };
    if !group.is_empty() || kind != "Service" {
        return Ok(Err(RefIssue {
            reason: "InvalidKind",
            message: format!(
                "{at}: {kind}.{group} is not a Service; sluice-proxy sends only to Services"
            ),
        }));
    }
    let namespace = match str_at(r, "/namespace") {
        "" => route_ns,
        ns => ns,
    };
    if namespace != route_ns {
        return Ok(Err(RefIssue {
            reason: "RefNotPermitted",
            message: format!(
                "{at}: Service {namespace}/{} is in another namespace; sluice-proxy does not read ReferenceGrants, so only Services in the route's namespace are allowed",
                str_at(r, "/name")
            ),
        }));
    }
    let Some(port) = r["port"].as_u64().filter(|p| (1..=65535).contains(p)) else {
        return Err(unsupported(format!(
            "{at}.port: a Service backendRef needs a port"
        )));
    };
    Ok(Ok(Backend {
        namespace: namespace.to_string(),
        name: str_at(r, "/name").to_string(),
        port: port as u16,
        weight: r["weight"].as_u64().unwrap_or(1),
        url: String::new(),
    }))
}

/// Finds `b`'s Service and port: sets its URL (the cluster IP), or says
/// why it does not resolve.
fn resolve(
    b: &mut Backend,
    at: &str,
    services: &BTreeMap<(String, String), &Value>,
) -> Result<(), RefIssue> {
    let Some(svc) = services.get(&(b.namespace.clone(), b.name.clone())) else {
        return Err(RefIssue {
            reason: "BackendNotFound",
            message: format!("{at}: Service {}/{} does not exist", b.namespace, b.name),
        });
    };
    let has_port = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["port"].as_u64() == Some(b.port as u64)));
    if !has_port {
        return Err(RefIssue {
            reason: "BackendNotFound",
            message: format!(
                "{at}: Service {}/{} has no port {}",
                b.namespace, b.name, b.port
            ),
        });
    }
    let ip = str_at(svc, "/spec/clusterIP");
    if ip.is_empty() || ip == "None" {
        return Err(RefIssue {
            reason: "BackendNotFound",
            message: format!(
                "{at}: Service {}/{} has no cluster IP (headless or ExternalName); sluice-proxy sends to a Service's cluster IP",
                b.namespace, b.name
            ),
        });
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    b.url = format!("http://{host}:{}", b.port);
    Ok(())
}

/// The path of an HTTPRoute match: `Exact` as is; `PathPrefix /p` (or
/// `/p/`) as the path elements `/p` (the proxy's `path_segments`).
fn http_path(m: &Value, at: &str) -> Result<PathMatch, Refusal> {
    let kind = m
        .pointer("/path/type")
        .and_then(Value::as_str)
        .unwrap_or("PathPrefix");
    let value = m
        .pointer("/path/value")
        .and_then(Value::as_str)
        .unwrap_or("/");
    if !value.starts_with('/') {
        return Err(unsupported(format!(
            "{at}.path.value: `{value}` is not an absolute path"
        )));
    }
    match kind {
        "Exact" => Ok(PathMatch::Exact(value.to_string())),
        "PathPrefix" => Ok(segments(value)),
        other => Err(unsupported(format!(
            "{at}.path.type: {other} is not supported by sluice-proxy (Exact and PathPrefix only)"
        ))),
    }
}

/// Path elements `value` without its trailing `/` (`/` alone stays).
fn segments(value: &str) -> PathMatch {
    match value.trim_end_matches('/') {
        "" => PathMatch::Segments("/".to_string()),
        p => PathMatch::Segments(p.to_string()),
    }
}

/// The path of a GRPCRoute match: service and method → exact
/// `/SERVICE/METHOD`; service alone → the path elements `/SERVICE`;
/// neither → `/`.
fn grpc_path(m: &Value, at: &str) -> Result<PathMatch, Refusal> {
    let method = &m["method"];
    if method.is_null() {
        return Ok(segments("/"));
    }
    let kind = match str_at(method, "/type") {
        "" => "Exact",
        t => t,
    };
    if kind != "Exact" {
        return Err(unsupported(format!(
            "{at}.method.type: {kind} is not supported by sluice-proxy (Exact only)"
        )));
    }
    let service = str_at(method, "/service");
    let name = str_at(method, "/method");
    match (service.is_empty(), name.is_empty()) {
        (false, false) => Ok(PathMatch::Exact(format!("/{service}/{name}"))),
        (false, true) => Ok(segments(&format!("/{service}"))),
        (true, false) => Err(unsupported(format!(
            "{at}.method: a method match without a service is not supported by sluice-proxy (it would be the path /*/{name}, which its path matches cannot say; name the service)"
        ))),
        (true, true) => Ok(segments("/")),
    }
}

/// `Exact` name/value matches (headers or query parameters): the first
/// entry of a name counts and later ones are ignored, as the Gateway API
/// says (header names case-insensitively, parameter names as written).
fn exact_pairs(list: &Value, at: &str, what: &str, lower: bool) -> Result<Vec<Cond>, Refusal> {
    let mut conds: Vec<Cond> = Vec::new();
    for (k, h) in list.as_array().into_iter().flatten().enumerate() {
        let t = match str_at(h, "/type") {
            "" => "Exact",
            t => t,
        };
        if t != "Exact" {
            return Err(unsupported(format!(
                "{at}.{what}[{k}].type: {t} is not supported by sluice-proxy (Exact only)"
            )));
        }
        let name = str_at(h, "/name");
        let name = if lower {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        if conds.iter().any(|c| c.name == name) {
            continue;
        }
        conds.push(Cond {
            name,
            value: str_at(h, "/value").to_string(),
            index: k,
        });
    }
    conds.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    Ok(conds)
}

/// A `RequestHeaderModifier` / `ResponseHeaderModifier`: fields the proxy
/// owns are refused; in `set` and in `add` the first entry of a name
/// counts (case-insensitively); a name both set and removed is refused
/// (the proxy applies a modifier in one pass, and either reading would
/// surprise someone).
fn modifier_of(f: &Value, filter: usize, at: &str) -> Result<Modifier, Refusal> {
    let owned = |name: &str, at: String| -> Result<(), Refusal> {
        if crate::fields::proxy_owned_field(name.as_bytes()) {
            Err(unsupported(format!(
                "{at}: `{name}` is a field sluice-proxy owns (it sets it, or frames the message or connection by it), so a filter may not change it"
            )))
        } else {
            Ok(())
        }
    };
    let mut m = Modifier {
        filter,
        ..Modifier::default()
    };
    for (list, field) in [("set", &mut m.set), ("add", &mut m.add)] {
        for (k, h) in f[list].as_array().into_iter().flatten().enumerate() {
            let name = str_at(h, "/name");
            owned(name, format!("{at}.{list}[{k}].name"))?;
            if field.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
                continue;
            }
            field.push(Cond {
                name: name.to_string(),
                value: str_at(h, "/value").to_string(),
                index: k,
            });
        }
    }
    for (k, n) in f["remove"].as_array().into_iter().flatten().enumerate() {
        let name = n.as_str().unwrap_or("");
        owned(name, format!("{at}.remove[{k}]"))?;
        if !m.remove.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            m.remove.push(name.to_string());
        }
    }
    for c in &m.set {
        if m.remove.iter().any(|n| n.eq_ignore_ascii_case(&c.name)) {
            return Err(unsupported(format!(
                "{at}.set[{}].name: `{}` is both set and removed",
                c.index, c.name
            )));
        }
    }
    Ok(m)
}

/// Reads one rule, or the refusal of the route. Backends are resolved
/// here: a rule with an invalid backendRef (of non-zero weight) is
/// served as a 500 and its issues returned.
fn read_rule(
    kind: RouteKind,
    i: usize,
    rule: &Value,
    ns: &str,
    services: &BTreeMap<(String, String), &Value>,
    issues: &mut Vec<RefIssue>,
) -> Result<Plan, Refusal> {
    let at = format!("spec.rules[{i}]");
    let matches = read_matches(kind, i, rule, &at)?;
    let filters = read_filters(rule, &at, ns, services, issues)?;
    let backends = read_backends(rule, &at, ns, services, issues)?;
    let timeout = match (
        rule.pointer("/timeouts/backendRequest")
            .and_then(Value::as_str),
        rule.pointer("/timeouts/request").and_then(Value::as_str),
    ) {
        (Some(t), _) => Some((t.to_string(), "backendRequest")),
        (None, Some(t)) => Some((t.to_string(), "request")),
        (None, None) => None,
    };
    if filters.mirror_written && backends.written == 2 {
        return Err(unsupported(format!(
            "{at}.filters: RequestMirror is supported by sluice-proxy on a rule with one backendRef"
        )));
    }
    // Every weight 0 sends the rule's requests nowhere: the rule answers
    // 500, as for a rule whose backendRefs are all invalid, rather than
    // letting them fall through to a less specific route.
    let all_zero = !backends.resolved.is_empty() && backends.resolved.iter().all(|b| b.weight == 0);
    let target = if backends.invalid || backends.resolved.is_empty() || all_zero {
        Target::Error500
    } else {
        let canary_bp = canary_bp(&backends.resolved);
        let mut resolved = backends.resolved.into_iter();
        Target::Backends {
            stable: resolved.next().expect("one backend at least"),
            canary: resolved.next(),
            canary_bp,
        }
    };
    Ok(Plan {
        rule: i,
        matches,
        target,
        mirror: filters.mirror,
        timeout,
        request_headers: filters.request_headers,
        response_headers: filters.response_headers,
    })
}

/// The matches of rule `i` (at `at`), without repeats; a rule without
/// matches has one that matches every request.
fn read_matches(kind: RouteKind, i: usize, rule: &Value, at: &str) -> Result<Vec<Match>, Refusal> {
    let default_matches = vec![json!({})];
    let raw = rule["matches"]
        .as_array()
        .filter(|m| !m.is_empty())
        .unwrap_or(&default_matches);
    let mut matches: Vec<Match> = Vec::new();
    for (j, m) in raw.iter().enumerate() {
        let at = format!("{at}.matches[{j}]");
        let headers = exact_pairs(&m["headers"], &at, "headers", true)?;
        let (path, method, query) = match kind {
            RouteKind::Http => (
                http_path(m, &at)?,
                m["method"].as_str().map(str::to_string),
                exact_pairs(&m["queryParams"], &at, "queryParams", false)?,
            ),
            RouteKind::Grpc => (grpc_path(m, &at)?, None, Vec::new()),
        };
        let m = Match {
            path,
            method,
            headers,
            query,
            at: (i, j),
            to_canary: false,
        };
        if !matches.iter().any(|o| o.key() == m.key()) {
            matches.push(m);
        }
    }
    Ok(matches)
}

/// A rule's filters, read.
struct RuleFilters {
    /// The mirrored Service and percent, and the filter's index (`None`
    /// also when its backendRef does not resolve).
    mirror: Option<(Backend, u64, usize)>,
    /// Whether the rule has a `RequestMirror` filter at all.
    mirror_written: bool,
    request_headers: Option<Modifier>,
    response_headers: Option<Modifier>,
}

/// The filters of the rule at `at`: one of each supported type at most.
fn read_filters(
    rule: &Value,
    at: &str,
    ns: &str,
    services: &BTreeMap<(String, String), &Value>,
    issues: &mut Vec<RefIssue>,
) -> Result<RuleFilters, Refusal> {
    let mut read = RuleFilters {
        mirror: None,
        mirror_written: false,
        request_headers: None,
        response_headers: None,
    };
    for (j, f) in rule["filters"].as_array().into_iter().flatten().enumerate() {
        let fat = format!("{at}.filters[{j}]");
        match str_at(f, "/type") {
            "RequestMirror" if !read.mirror_written => {
                read.mirror_written = true;
                let bat = format!("{fat}.requestMirror.backendRef");
                let percent = f["requestMirror"]["percent"].as_u64().unwrap_or(100);
                match backend_of(&f["requestMirror"]["backendRef"], ns, &bat)? {
                    Ok(mut b) => match resolve(&mut b, &bat, services) {
                        Ok(()) => read.mirror = Some((b, percent, j)),
                        // A mirror copy changes no answer: the rule is
                        // served without it, and the status says why.
                        Err(issue) => issues.push(issue),
                    },
                    Err(issue) => issues.push(issue),
                }
            }
            "RequestMirror" => {
                return Err(unsupported(format!(
                    "{fat}.type: sluice-proxy mirrors a route to one Service; a second RequestMirror is not supported"
                )));
            }
            "RequestHeaderModifier" if read.request_headers.is_none() => {
                read.request_headers = Some(modifier_of(
                    &f["requestHeaderModifier"],
                    j,
                    &format!("{fat}.requestHeaderModifier"),
                )?);
            }
            "ResponseHeaderModifier" if read.response_headers.is_none() => {
                read.response_headers = Some(modifier_of(
                    &f["responseHeaderModifier"],
                    j,
                    &format!("{fat}.responseHeaderModifier"),
                )?);
            }
            t @ ("RequestHeaderModifier" | "ResponseHeaderModifier") => {
                return Err(unsupported(format!(
                    "{fat}.type: a second {t} in one rule is not supported (write one)"
                )));
            }
            t => {
                return Err(unsupported(format!(
                    "{fat}.type: {t} is not supported by sluice-proxy"
                )));
            }
        }
    }
    Ok(read)
}

/// A rule's backendRefs, read and resolved.
struct RuleBackends {
    /// How many backendRefs the rule has (one or two).
    written: usize,
    /// The ones that resolved, in order.
    resolved: Vec<Backend>,
    /// Whether one of non-zero weight did not resolve (its issue is in
    /// the route's issues).
    invalid: bool,
}

/// The backendRefs of the rule at `at`: one or two, without filters, not
/// one alone of weight 0.
fn read_backends(
    rule: &Value,
    at: &str,
    ns: &str,
    services: &BTreeMap<(String, String), &Value>,
    issues: &mut Vec<RefIssue>,
) -> Result<RuleBackends, Refusal> {
    let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
    if refs.is_empty() {
        return Err(unsupported(format!(
            "{at}.backendRefs: a rule without backendRefs is not supported by sluice-proxy"
        )));
    }
    if refs.len() > 2 {
        return Err(unsupported(format!(
            "{at}.backendRefs: sluice-proxy splits a rule between a stable and a canary, at most two backends, not {}",
            refs.len()
        )));
    }
    let mut backends = RuleBackends {
        written: refs.len(),
        resolved: Vec::new(),
        invalid: false,
    };
    for (j, r) in refs.iter().enumerate() {
        let bat = format!("{at}.backendRefs[{j}]");
        if r["filters"].as_array().is_some_and(|f| !f.is_empty()) {
            return Err(unsupported(format!(
                "{bat}.filters: per-backend filters are not supported by sluice-proxy (put the filter on the rule)"
            )));
        }
        let weight = r["weight"].as_u64().unwrap_or(1);
        let resolved = backend_of(r, ns, &bat)?.and_then(|mut b| {
            resolve(&mut b, &bat, services)?;
            Ok(b)
        });
        match resolved {
            Ok(b) => backends.resolved.push(b),
            Err(issue) => {
                issues.push(issue);
                // An invalid backendRef of weight 0 gets no request.
                backends.invalid |= weight > 0;
            }
        }
    }
    Ok(backends)
}

/// The canary share of a rule's two backends in basis points: the
/// proxy's unit, so a share between two (weights 1:2, 33.333… %) is
/// rounded to the nearest (33.33 %), within the "epsilon from the exact
/// proportion" the Gateway API allows; the split is then exact at that
/// share. Both weights 0 are handled by the caller (500).
fn canary_bp(backends: &[Backend]) -> u32 {
    let [stable, canary] = backends else {
        return 0;
    };
    let total = stable.weight + canary.weight;
    if total == 0 {
        return 0;
    }
    ((canary.weight * 10_000 + total / 2) / total) as u32
}

/// Reads one route's rules into plans (and the backendRefs that do not
/// resolve), or the refusal of the route.
fn plan_route(
    route: &Value,
    kind: RouteKind,
    services: &BTreeMap<(String, String), &Value>,
) -> Result<(Vec<Plan>, Vec<RefIssue>), Refusal> {
    let ns = str_at(route, "/metadata/namespace");
    let mut issues = Vec::new();
    let mut plans = Vec::new();
    for (i, rule) in route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        plans.push(read_rule(kind, i, rule, ns, services, &mut issues)?);
    }
    // A match an earlier rule already has never reaches a later one (the
    // Gateway API's rule order).
    let mut seen: BTreeSet<MatchKey> = BTreeSet::new();
    for plan in &mut plans {
        plan.matches.retain(|m| seen.insert(m.key()));
    }
    plans.retain(|p| !p.matches.is_empty());
    // A/B rules: a rule with one backendRef that is the canary of an
    // earlier-or-later weighted rule with the same treatment joins it, its
    // matches sent to the canary (`backend: canary`), so its requests are
    // counted on the weighted rule's `route` as `decision="match"`; each
    // match keeps its own conditions, so the precedence is unchanged.
    let mut k = 0;
    while k < plans.len() {
        let joined = plans[k].ab_backend().and_then(|backend| {
            plans.iter().position(|p| match &p.target {
                Target::Backends {
                    canary: Some(c), ..
                } => c.same_service(backend) && p.same_treatment(&plans[k]),
                _ => false,
            })
        });
        match joined {
            Some(target) => {
                let ab = plans.remove(k);
                let target = if target > k { target - 1 } else { target };
                let plan = &mut plans[target];
                plan.matches.extend(ab.matches.into_iter().map(|m| Match {
                    to_canary: true,
                    ..m
                }));
                // Rule order breaks the proxy's remaining ties.
                plan.matches.sort_by_key(|m| m.at);
            }
            None => k += 1,
        }
    }
    Ok((plans, issues))
}

/// `*.example.com` and `a.example.com`: the more specific of two
/// hostnames when they intersect.
fn intersect(a: &str, b: &str) -> Option<String> {
    let wild = |w: &str, h: &str| {
        w.strip_prefix('*')
            .is_some_and(|suffix| h.ends_with(suffix) && h.len() > suffix.len())
    };
    if a == b {
        Some(a.to_string())
    } else if wild(a, b) {
        Some(b.to_string())
    } else if wild(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// Whether two host lists (empty: any host) share a host.
fn hosts_overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|x| b.iter().any(|y| intersect(x, y).is_some()))
}

fn pairs(list: &[Cond]) -> Value {
    list.iter()
        .map(|c| json!({"name": c.name, "value": c.value}))
        .collect()
}

fn modifier_json(m: &Modifier) -> Value {
    json!({"set": pairs(&m.set), "add": pairs(&m.add), "remove": m.remove})
}

fn match_json(m: &Match) -> Value {
    let mut j = match &m.path {
        PathMatch::Exact(p) => json!({"path_exact": p}),
        PathMatch::Segments(p) if p == "/" => json!({"path_prefix": "/"}),
        PathMatch::Segments(p) => json!({"path_segments": p}),
    };
    if let Some(method) = &m.method {
        j["methods"] = json!([method]);
    }
    if !m.headers.is_empty() {
        j["headers"] = pairs(&m.headers);
    }
    if !m.query.is_empty() {
        j["query"] = pairs(&m.query);
    }
    if m.to_canary {
        j["backend"] = json!("canary");
    }
    j
}

/// The Sluice route of `plan` with `matches` (a lone match of any path
/// stays the `path_prefix: /` shorthand, which the proxy looks up
/// fastest).
fn route_config(
    name: String,
    kind: RouteKind,
    hosts: &[String],
    listener: Option<&str>,
    plan: &Plan,
    matches: &[&Match],
) -> RouteConfig {
    let mut r = json!({"name": name, "hosts": hosts});
    match matches {
        [m] if m.matches_everything() => r["path_prefix"] = json!("/"),
        _ => r["matches"] = matches.iter().map(|m| match_json(m)).collect(),
    }
    if let Some(l) = listener {
        r["listener"] = json!(l);
    }
    let Target::Backends {
        stable,
        canary,
        canary_bp,
    } = &plan.target
    else {
        r["direct_response"] = json!({"status": 500});
        return serde_json::from_value(r).expect("a route built from known fields");
    };
    r["stable"] = json!(stable.url);
    r["canary_weight"] = json!(*canary_bp as f64 / 100.0);
    if kind == RouteKind::Grpc {
        r["protocol"] = json!("http2");
    }
    if let Some(c) = canary {
        r["canary"] = json!(c.url);
    }
    if let Some((m, percent, _)) = &plan.mirror {
        r["canary"] = json!(m.url);
        r["mirror"] = json!({"percent": *percent as f64});
    }
    if let Some((t, _)) = &plan.timeout {
        r["timeouts"] = json!({"request": t});
    }
    if let Some(m) = &plan.request_headers {
        r["request_headers"] = modifier_json(m);
    }
    if let Some(m) = &plan.response_headers {
        r["response_headers"] = modifier_json(m);
    }
    serde_json::from_value(r).expect("a route built from known fields")
}

/// The field of the Gateway API object a proxy config error on a route
/// made of `plan` with `matches` is about: `field` is the path below
/// `routes[N]` (`matches[1].headers[0].value`, `request_headers.set[2].name`).
fn spec_field(kind: RouteKind, field: &str, plan: &Plan, matches: &[&Match]) -> String {
    let rule = format!("spec.rules[{}]", plan.rule);
    // `name[3]rest` → (3, rest).
    let indexed = |s: &str, name: &str| -> Option<(usize, String)> {
        let rest = s.strip_prefix(name)?.strip_prefix('[')?;
        let (n, rest) = rest.split_once(']')?;
        Some((n.parse().ok()?, rest.to_string()))
    };
    if let Some((j, rest)) = indexed(field, "matches")
        && let Some(m) = matches.get(j)
    {
        let at = format!("spec.rules[{}].matches[{}]", m.at.0, m.at.1);
        let rest = rest.strip_prefix('.').unwrap_or(&rest);
        if let Some((k, tail)) = indexed(rest, "headers")
            && let Some(c) = m.headers.get(k)
        {
            return format!("{at}.headers[{}]{tail}", c.index);
        }
        if let Some((k, tail)) = indexed(rest, "query")
            && let Some(c) = m.query.get(k)
        {
            return format!("{at}.queryParams[{}]{tail}", c.index);
        }
        if rest.starts_with("methods") {
            return format!("{at}.method");
        }
        if rest.starts_with("path") {
            return match kind {
                RouteKind::Http => format!("{at}.path.value"),
                RouteKind::Grpc => format!("{at}.method"),
            };
        }
        return at;
    }
    for (name, modifier, filter) in [
        (
            "request_headers",
            &plan.request_headers,
            "requestHeaderModifier",
        ),
        (
            "response_headers",
            &plan.response_headers,
            "responseHeaderModifier",
        ),
    ] {
        let Some(rest) = field.strip_prefix(name) else {
            continue;
        };
        let Some(m) = modifier else { continue };
        let at = format!("{rule}.filters[{}].{filter}", m.filter);
        let rest = rest.strip_prefix('.').unwrap_or(rest);
        for (list, conds) in [("set", &m.set), ("add", &m.add)] {
            if let Some((k, tail)) = indexed(rest, list)
                && let Some(c) = conds.get(k)
            {
                return format!("{at}.{list}[{}]{tail}", c.index);
            }
        }
        return format!("{at}.{rest}");
    }
    if field.starts_with("timeouts")
        && let Some((_, from)) = &plan.timeout
    {
        return format!("{rule}.timeouts.{from}");
    }
    if (field.starts_with("mirror") || field == "canary")
        && let Some((_, _, filter)) = &plan.mirror
    {
        return format!("{rule}.filters[{filter}].requestMirror");
    }
    if field.starts_with("hosts") {
        return "spec.hostnames".to_string();
    }
    format!("{rule} (sluice-proxy's route field {field})")
}

fn listener_name(port: u16) -> String {
    format!("port-{port}")
}

/// The base config: listeners from `layout`, no routes.
pub fn base_config(layout: &Layout) -> Config {
    let mut ports = layout.ports.iter();
    let first = ports.next().copied().unwrap_or(8080);
    let listeners: Vec<Value> = ports
        .map(|p| json!({"name": listener_name(*p), "listen": format!("{}:{p}", layout.bind)}))
        .collect();
    serde_json::from_value(json!({
        "listen": format!("{}:{first}", layout.bind),
        "admin": {"listen": layout.admin_listen},
        "listeners": listeners,
    }))
    .expect("a config built from known fields")
}

/// Where one parentRef of a route attaches: the port, the hosts (`None`:
/// any host) and the listeners.
struct Attachment {
    /// The index of its entry in the route's `status.parents`.
    parent: usize,
    gateway: (String, String),
    /// The port of the HTTP listeners it is served on; `None` when it
    /// attaches only to listeners sluice-proxy does not serve (HTTPS).
    port: Option<u16>,
    hosts: Option<Vec<String>>,
    /// The HTTP listeners it is served on.
    listeners: Vec<String>,
    /// The HTTPS listeners it attaches to without being served there.
    unserved: Vec<String>,
}

impl Attachment {
    /// Every listener it is attached to (the Gateway's `attachedRoutes`
    /// count, served or not).
    fn all_listeners(&self) -> impl Iterator<Item = ((String, String), String)> + '_ {
        self.listeners
            .iter()
            .chain(&self.unserved)
            .map(|l| (self.gateway.clone(), l.clone()))
    }
}

/// A route, by kind and namespace/name.
type RouteId = (&'static str, String, String);

/// The listener protocols whose routes are HTTPRoutes and GRPCRoutes.
/// Only `HTTP` is served: sluice-proxy does not terminate a Gateway
/// listener's TLS (its `certificateRefs`), so an `HTTPS` listener is
/// `Accepted: False` (`UnsupportedProtocol`), but routes still attach to
/// it and are counted in its `attachedRoutes`, as the spec asks of a
/// listener whatever its own conditions.
fn takes_http_routes(protocol: &str) -> bool {
    matches!(protocol, "HTTP" | "HTTPS")
}

/// A route accepted on a port: the status message, the plans served
/// with their matches, and the Sluice routes made of them.
type Served = (String, Vec<(Plan, Vec<Match>)>, Vec<RouteConfig>);

/// The Sluice routes made of one Gateway API route, for the final check.
struct Owner {
    kind: RouteKind,
    key: (String, String),
    routes: std::ops::Range<usize>,
    /// Which Sluice route came from which plan (to name a field).
    plans: Vec<(Plan, Vec<Match>)>,
    parents: Vec<usize>,
    attached: Vec<((String, String), String)>,
    generation: i64,
}

/// Translates everything: the config to serve and every status to write.
///
/// Each route is checked alone (its own Sluice routes in an empty
/// config, so an error names its field) and the whole config once at
/// the end: linear in the number of routes.
pub fn build(inputs: &Inputs, layout: &Layout) -> Outcome {
    let base = base_config(layout);
    let classes = our_classes(inputs);
    let gateways: BTreeMap<(String, String), &Value> = inputs
        .gateways
        .iter()
        .filter(|g| classes.contains(str_at(g, "/spec/gatewayClassName")))
        .map(|g| (key(g), g))
        .collect();
    let mut translation = Translation {
        inputs,
        layout,
        first_port: layout.ports.iter().next().copied(),
        services: inputs.services.iter().map(|s| (key(s), s)).collect(),
        config: base.clone(),
        served: BTreeMap::new(),
        kinds_served: Vec::new(),
        owners: Vec::new(),
        unserved_attached: BTreeSet::new(),
        outcome: Outcome {
            config: base.clone(),
            classes: class_statuses(inputs),
            gateways: BTreeMap::new(),
            routes: BTreeMap::new(),
            grpc_routes: BTreeMap::new(),
        },
        base,
    };
    for (kind, route) in routes_oldest_first(inputs) {
        translation.add_route(kind, route, &gateways);
    }
    let refused = translation.check_whole_config();
    let mut attached = attached_counts(&translation.owners, &refused);
    for (_, (gw_ns, gw_name), listener) in &translation.unserved_attached {
        *attached
            .entry((gw_ns.clone(), gw_name.clone(), listener.clone()))
            .or_default() += 1;
    }
    let mut outcome = translation.outcome;
    for ((ns, name), g) in &gateways {
        outcome.gateways.insert(
            (ns.clone(), name.clone()),
            gateway_status(g, (ns, name), &attached, layout),
        );
    }
    outcome.config = translation.config;
    outcome
}

/// The conditions of every GatewayClass this controller serves.
fn class_statuses(inputs: &Inputs) -> BTreeMap<String, Vec<Value>> {
    inputs
        .classes
        .iter()
        .filter(|c| str_at(c, "/spec/controllerName") == inputs.controller)
        .map(|c| {
            (
                str_at(c, "/metadata/name").to_string(),
                vec![condition(
                    "Accepted",
                    true,
                    "Accepted",
                    "served by sluice-proxy",
                    generation(c),
                )],
            )
        })
        .collect()
}

/// Every HTTPRoute and GRPCRoute, oldest first, then by namespace/name
/// (the Gateway API's order): on an identical match the older route keeps
/// it, and config order breaks the proxy's remaining ties the same way.
fn routes_oldest_first(inputs: &Inputs) -> Vec<(RouteKind, &Value)> {
    let mut routes: Vec<(RouteKind, &Value)> = inputs
        .routes
        .iter()
        .map(|r| (RouteKind::Http, r))
        .chain(inputs.grpc_routes.iter().map(|r| (RouteKind::Grpc, r)))
        .collect();
    routes.sort_by_key(|(kind, r)| {
        (
            str_at(r, "/metadata/creationTimestamp").to_string(),
            key(r),
            *kind == RouteKind::Grpc,
        )
    });
    routes
}

/// A route's `spec.hostnames`.
fn route_hostnames(route: &Value) -> Vec<String> {
    route
        .pointer("/spec/hostnames")
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The `ResolvedRefs` condition of a route planned as `planned`.
fn resolved_condition(
    planned: &Result<(Vec<Plan>, Vec<RefIssue>), Refusal>,
    generation: i64,
) -> Value {
    match planned {
        Ok((_, issues)) if !issues.is_empty() => {
            let messages: Vec<&str> = issues.iter().map(|i| i.message.as_str()).collect();
            condition(
                "ResolvedRefs",
                false,
                issues[0].reason,
                &format!(
                    "{} (a rule whose backendRef does not resolve is answered 500)",
                    messages.join("; ")
                ),
                generation,
            )
        }
        Ok(_) => condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backendRef resolved",
            generation,
        ),
        Err(_) => condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "not checked: the route is not accepted",
            generation,
        ),
    }
}

/// The Gateway a parentRef of a route in namespace `ns` names, if it is
/// one of this controller's (other parents are not ours to answer).
fn our_gateway<'g>(
    parent: &Value,
    ns: &str,
    gateways: &BTreeMap<(String, String), &'g Value>,
) -> Option<((String, String), &'g Value)> {
    let group = parent["group"].as_str().unwrap_or(GROUP);
    let parent_kind = parent["kind"].as_str().unwrap_or("Gateway");
    let gw_ns = match str_at(parent, "/namespace") {
        "" => ns,
        n => n,
    };
    let gw_key = (gw_ns.to_string(), str_at(parent, "/name").to_string());
    if group != GROUP || parent_kind != "Gateway" {
        return None;
    }
    let gateway = gateways.get(&gw_key)?;
    Some((gw_key, *gateway))
}

/// Where parentRef `parent` (entry `index` of `status.parents`) attaches a
/// route with hostnames `route_hosts` on `gateway`, or why it does not.
fn attach(
    parent: &Value,
    index: usize,
    (gw_key, gateway): ((String, String), &Value),
    same_namespace: bool,
    route_hosts: &[String],
) -> Result<Attachment, Refusal> {
    let refuse = |reason: &'static str, message: &str| Refusal {
        reason,
        message: message.to_string(),
    };
    // The listeners this parentRef selects.
    let section = parent["sectionName"].as_str();
    let port = parent["port"].as_u64();
    let selected: Vec<Listener> = listeners(gateway)
        .into_iter()
        .filter(|l| section.is_none_or(|s| s == l.name))
        .filter(|l| port.is_none_or(|p| p == l.port as u64))
        .collect();
    if selected.is_empty() {
        return Err(refuse(
            "NoMatchingParent",
            "no listener of the Gateway has this sectionName and port",
        ));
    }
    let allowed: Vec<&Listener> = selected
        .iter()
        .filter(|l| takes_http_routes(&l.protocol))
        .filter(|l| l.from == "All" || (l.from == "Same" && same_namespace))
        .collect();
    if allowed.is_empty() {
        return Err(refuse(
            "NotAllowedByListeners",
            "no selected HTTP or HTTPS listener allows routes from this namespace (allowedRoutes.namespaces.from Same or All; Selector is not supported by sluice-proxy)",
        ));
    }
    // (listener, hosts) pairs.
    let mut targets = Vec::new();
    for l in &allowed {
        let hosts: Option<Vec<String>> = match (&l.hostname, route_hosts.is_empty()) {
            (None, _) => Some(route_hosts.to_vec()),
            (Some(h), true) => Some(vec![h.clone()]),
            (Some(h), false) => {
                let both: Vec<String> =
                    route_hosts.iter().filter_map(|r| intersect(h, r)).collect();
                (!both.is_empty()).then_some(both)
            }
        };
        if let Some(hosts) = hosts {
            targets.push((*l, hosts));
        }
    }
    if targets.is_empty() {
        return Err(refuse(
            "NoMatchingListenerHostname",
            "no hostname of the route matches a selected listener's hostname",
        ));
    }
    // Attached to HTTPS listeners, served on the HTTP ones only.
    let (targets, unserved): (Vec<_>, Vec<_>) =
        targets.into_iter().partition(|(l, _)| l.protocol == "HTTP");
    let unserved: Vec<String> = unserved.iter().map(|(l, _)| l.name.clone()).collect();
    let ports: BTreeSet<u16> = targets.iter().map(|(l, _)| l.port).collect();
    if ports.len() > 1 {
        let ports: Vec<u16> = ports.into_iter().collect();
        return Err(refuse(
            "UnsupportedValue",
            &format!(
                "the parentRef selects listeners on ports {ports:?}; sluice-proxy serves a route on one port (its metrics are labelled by the route's name): select one with sectionName or port"
            ),
        ));
    }
    let mut hosts = Some(Vec::new());
    for (_, h) in &targets {
        add_hosts(&mut hosts, h);
    }
    Ok(Attachment {
        parent: index,
        gateway: gw_key,
        port: targets.first().map(|(l, _)| l.port),
        hosts,
        listeners: targets.iter().map(|(l, _)| l.name.clone()).collect(),
        unserved,
    })
}

/// What becomes of a route on the port its parentRefs attach it to.
enum PortDecision {
    Served(Served),
    /// Accepted, not served yet: the proxy does not listen on the port.
    NotListening(String),
    Refused(Refusal),
}

/// One Gateway API route on its way to Sluice routes: who it is and where
/// its parentRefs attach it.
struct RouteAt<'r> {
    kind: RouteKind,
    ns: &'r str,
    name: &'r str,
    generation: i64,
    port: u16,
    /// The union of the hostnames of its parentRefs on `port`.
    hosts: Vec<String>,
    /// `hosts` sorted without repeats (the key of a served match).
    sorted_hosts: Vec<String>,
}

/// The translation's state while the routes are added, oldest first.
struct Translation<'i> {
    inputs: &'i Inputs,
    layout: &'i Layout,
    base: Config,
    first_port: Option<u16>,
    services: BTreeMap<(String, String), &'i Value>,
    config: Config,
    /// (port, sorted hosts, match) served so far → the route serving it.
    served: BTreeMap<(u16, Vec<String>, MatchKey), String>,
    /// (port, hosts, kind, "NS/NAME") of the routes served so far.
    kinds_served: Vec<(u16, Vec<String>, RouteKind, String)>,
    owners: Vec<Owner>,
    /// (gateway, listener) of each accepted attachment that is not served
    /// (an HTTPS listener, a port the proxy does not listen on yet): not an
    /// owner of Sluice routes, but counted in `attachedRoutes`.
    /// The route is in the key: a route counts once per listener.
    unserved_attached: BTreeSet<(RouteId, (String, String), String)>,
    outcome: Outcome,
}

impl Translation<'_> {
    /// Adds one route: its Sluice routes if it is served, and its
    /// `status.parents` entries for this controller's Gateways.
    fn add_route(
        &mut self,
        kind: RouteKind,
        route: &Value,
        gateways: &BTreeMap<(String, String), &Value>,
    ) {
        let (ns, name) = key(route);
        let gen_ = generation(route);
        let planned = plan_route(route, kind, &self.services);
        let route_hosts = route_hostnames(route);
        let resolved_cond = resolved_condition(&planned, gen_);
        let controller = &self.inputs.controller;
        let status = |parent: &Value, accepted: Value| {
            json!({
                "parentRef": parent,
                "controllerName": controller,
                "conditions": [accepted, resolved_cond.clone()],
            })
        };
        let mut parents: Vec<Value> = Vec::new();
        let mut parent_refs: Vec<&Value> = Vec::new();
        let mut attachments: Vec<Attachment> = Vec::new();
        for parent in route
            .pointer("/spec/parentRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(gateway) = our_gateway(parent, &ns, gateways) else {
                continue;
            };
            parent_refs.push(parent);
            let same_namespace = gateway.0.0 == ns;
            let attached = match &planned {
                Err(r) => Err(r.clone()),
                Ok(_) => attach(parent, parents.len(), gateway, same_namespace, &route_hosts),
            };
            match attached {
                Ok(a) => {
                    attachments.push(a);
                    parents.push(Value::Null);
                }
                Err(r) => parents.push(status(
                    parent,
                    condition("Accepted", false, r.reason, &r.message, gen_),
                )),
            }
        }
        // Every parentRef on one port makes one Sluice route per rule, on
        // the union of their hostnames; a parentRef on another port is
        // refused (a route name is one port).
        let first_port = attachments.iter().find_map(|a| a.port);
        if let (Some(port), Ok((plans, _))) = (first_port, &planned) {
            let mut hosts = Some(Vec::new());
            for a in attachments.iter().filter(|a| a.port == Some(port)) {
                add_hosts(&mut hosts, a.hosts.as_deref().unwrap_or(&[]));
            }
            let hosts = hosts.unwrap_or_default();
            let mut sorted_hosts = hosts.clone();
            sorted_hosts.sort();
            sorted_hosts.dedup();
            let at = RouteAt {
                kind,
                ns: &ns,
                name: &name,
                generation: gen_,
                port,
                hosts,
                sorted_hosts,
            };
            let decision = self.decide(&at, plans);
            let accepted_cond = self.record(&at, decision, &attachments);
            for a in attachments.iter().filter(|a| a.port.is_some()) {
                let parent = parent_refs[a.parent];
                parents[a.parent] = if a.port == Some(port) {
                    status(parent, accepted_cond.clone())
                } else {
                    status(
                        parent,
                        condition(
                            "Accepted",
                            false,
                            "UnsupportedValue",
                            &format!(
                                "another parentRef of this route attaches it on port {port}; sluice-proxy serves a route on one port (its metrics are labelled by the route's name)"
                            ),
                            gen_,
                        ),
                    )
                };
            }
        }
        // A parentRef attached only to listeners sluice-proxy does not
        // serve: accepted there (the spec counts it on the listener), and
        // said to be unserved.
        if planned.is_ok() {
            for a in attachments.iter().filter(|a| a.port.is_none()) {
                let message = format!(
                    "attached to listener{} {} (HTTPS); not served: sluice-proxy serves HTTP listeners only",
                    if a.unserved.len() == 1 { "" } else { "s" },
                    a.unserved.join(", ")
                );
                parents[a.parent] = status(
                    parent_refs[a.parent],
                    condition("Accepted", true, "Accepted", &message, gen_),
                );
                let id = (kind.kind(), ns.clone(), name.clone());
                self.unserved_attached
                    .extend(a.all_listeners().map(|(g, l)| (id.clone(), g, l)));
            }
        }
        if !parents.is_empty() {
            match kind {
                RouteKind::Http => self.outcome.routes.insert((ns, name), parents),
                RouteKind::Grpc => self.outcome.grpc_routes.insert((ns, name), parents),
            };
        }
    }

    /// Whether route `at`, planned as `plans`, is served on its port.
    fn decide(&self, at: &RouteAt<'_>, plans: &[Plan]) -> PortDecision {
        let port = at.port;
        if !self.layout.ports.contains(&port) {
            return PortDecision::NotListening(format!(
                "accepted; not served: sluice-proxy does not listen on port {port} yet (listeners are fixed at start; restart the proxy)"
            ));
        }
        if let Some((_, _, other_kind, other)) = self
            .kinds_served
            .iter()
            .find(|(p, h, k, _)| *p == port && *k != at.kind && hosts_overlap(h, &at.hosts))
        {
            return PortDecision::Refused(Refusal {
                reason: "Conflicted",
                message: format!(
                    "the {} {other} is older and serves a hostname of this route on port {port}; an HTTPRoute and a GRPCRoute may not share a hostname on a listener, so only the older is accepted",
                    other_kind.kind()
                ),
            });
        }
        self.make_routes(at, plans)
    }

    /// The Sluice routes of `at`'s rules, without the matches an older
    /// route serves already, checked alone.
    fn make_routes(&self, at: &RouteAt<'_>, plans: &[Plan]) -> PortDecision {
        let kind = at.kind;
        let listener = (Some(at.port) != self.first_port).then(|| listener_name(at.port));
        let mut made = Vec::new();
        let mut plans_made = Vec::new();
        let mut taken = 0;
        let mut keepers: BTreeSet<&str> = BTreeSet::new();
        for plan in plans {
            let mut matches: Vec<Match> = Vec::new();
            for m in &plan.matches {
                match self
                    .served
                    .get(&(at.port, at.sorted_hosts.clone(), m.key()))
                {
                    Some(older) => {
                        taken += 1;
                        keepers.insert(older);
                    }
                    None => matches.push(m.clone()),
                }
            }
            if matches.is_empty() {
                continue;
            }
            let refs: Vec<&Match> = matches.iter().collect();
            made.push(route_config(
                kind.route_name(at.ns, at.name, plan.rule),
                kind,
                &at.hosts,
                listener.as_deref(),
                plan,
                &refs,
            ));
            plans_made.push((plan.clone(), matches));
        }
        let mut alone = self.base.clone();
        alone.routes = made;
        match alone.validate() {
            Ok(_) => {
                let message = match taken {
                    0 => "served by sluice-proxy".to_string(),
                    n => format!(
                        "served by sluice-proxy; {n} of its matches are also an older route's (the same hostnames and conditions), which keeps them: {}",
                        keepers.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                };
                PortDecision::Served((message, plans_made, alone.routes))
            }
            Err(errors) => {
                let said: Vec<String> = errors
                    .0
                    .iter()
                    .map(|e| describe_error(kind, &e.path, &e.message, &plans_made))
                    .collect();
                PortDecision::Refused(Refusal {
                    reason: "UnsupportedValue",
                    message: format!(
                        "sluice-proxy cannot serve this {}: {}",
                        kind.kind(),
                        said.join("; ")
                    ),
                })
            }
        }
    }

    /// Takes `decision` on route `at` in: a served route's matches, hosts
    /// and Sluice routes are recorded. Its `Accepted` condition.
    fn record(
        &mut self,
        at: &RouteAt<'_>,
        decision: PortDecision,
        attachments: &[Attachment],
    ) -> Value {
        let (kind, port, gen_) = (at.kind, at.port, at.generation);
        let (message, plans_made, made) = match decision {
            PortDecision::Served(served) => served,
            PortDecision::NotListening(message) => {
                // Accepted, so counted on its listeners, though not served.
                let id = (kind.kind(), at.ns.to_string(), at.name.to_string());
                self.unserved_attached.extend(
                    attachments
                        .iter()
                        .filter(|a| a.port == Some(port))
                        .flat_map(Attachment::all_listeners)
                        .map(|(g, l)| (id.clone(), g, l)),
                );
                return condition("Accepted", true, "Accepted", &message, gen_);
            }
            PortDecision::Refused(r) => {
                return condition("Accepted", false, r.reason, &r.message, gen_);
            }
        };
        for (plan, ms) in &plans_made {
            let route_name = kind.route_name(at.ns, at.name, plan.rule);
            for m in ms {
                self.served
                    .insert((port, at.sorted_hosts.clone(), m.key()), route_name.clone());
            }
        }
        self.kinds_served.push((
            port,
            at.hosts.clone(),
            kind,
            format!("{}/{}", at.ns, at.name),
        ));
        let start = self.config.routes.len();
        self.config.routes.extend(made);
        let on_port = || attachments.iter().filter(move |a| a.port == Some(port));
        self.owners.push(Owner {
            kind,
            key: (at.ns.to_string(), at.name.to_string()),
            routes: start..self.config.routes.len(),
            plans: plans_made,
            parents: on_port().map(|a| a.parent).collect(),
            // A set: a route counts once per listener, however many of
            // its parentRefs select it.
            attached: on_port()
                .flat_map(Attachment::all_listeners)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            generation: gen_,
        });
        condition("Accepted", true, "Accepted", &message, gen_)
    }

    /// Checks the whole config, once. Every route passed alone and no
    /// match is served twice, so this holds unless the proxy checks
    /// something across routes that the translation does not know; then
    /// the route an error names is refused (its statuses say why) and the
    /// rest checked again. The owners refused.
    fn check_whole_config(&mut self) -> BTreeSet<usize> {
        let mut refused: BTreeSet<usize> = BTreeSet::new();
        loop {
            let candidate = Config {
                routes: self
                    .owners
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !refused.contains(i))
                    .flat_map(|(_, o)| self.config.routes[o.routes.clone()].iter().cloned())
                    .collect(),
                ..self.base.clone()
            };
            let errors = match candidate.validate() {
                Ok(_) => {
                    self.config = candidate;
                    return refused;
                }
                Err(errors) => errors,
            };
            // Where each live owner's Sluice routes are in `candidate`.
            let mut offsets = Vec::new();
            let mut at = 0;
            for i in (0..self.owners.len()).filter(|i| !refused.contains(i)) {
                offsets.push((at..at + self.owners[i].routes.len(), i));
                at += self.owners[i].routes.len();
            }
            let mut progress = false;
            for e in &errors.0 {
                if let Some(i) = self.refuse_blamed(e, &offsets) {
                    progress |= refused.insert(i);
                }
            }
            if !progress {
                tracing::error!(%errors, "the config made of the Gateway API objects is refused by the proxy and no route can be blamed");
                self.config = self.base.clone();
                return refused;
            }
        }
    }

    /// The owner that whole-config error `e` names (`offsets`: the range
    /// of each checked owner's routes), its statuses now saying why it is
    /// refused.
    fn refuse_blamed(
        &mut self,
        e: &crate::config::FieldError,
        offsets: &[(std::ops::Range<usize>, usize)],
    ) -> Option<usize> {
        let (n, rest) = e
            .path
            .strip_prefix("routes[")
            .and_then(|s| s.split_once(']'))
            .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)))?;
        let (range, i) = offsets.iter().find(|(r, _)| r.contains(&n))?;
        let o = &self.owners[*i];
        let rest = rest.strip_prefix('.').unwrap_or(rest);
        let local = format!(
            "routes[{}]{}{rest}",
            n - range.start,
            if rest.is_empty() { "" } else { "." }
        );
        let message = format!(
            "sluice-proxy cannot serve this {} beside the older routes: {}",
            o.kind.kind(),
            describe_error(o.kind, &local, &e.message, &o.plans)
        );
        if let Some(statuses) = match o.kind {
            RouteKind::Http => self.outcome.routes.get_mut(&o.key),
            RouteKind::Grpc => self.outcome.grpc_routes.get_mut(&o.key),
        } {
            for &p in &o.parents {
                if let Some(s) = statuses.get_mut(p) {
                    s["conditions"][0] = condition(
                        "Accepted",
                        false,
                        "UnsupportedValue",
                        &message,
                        o.generation,
                    );
                }
            }
        }
        Some(*i)
    }
}

/// Attached route counts per (gateway namespace, gateway name, listener
/// name), of the owners not `refused`.
fn attached_counts(
    owners: &[Owner],
    refused: &BTreeSet<usize>,
) -> BTreeMap<(String, String, String), i64> {
    let mut attached: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for (i, o) in owners.iter().enumerate() {
        if refused.contains(&i) {
            continue;
        }
        for ((gw_ns, gw_name), listener) in &o.attached {
            *attached
                .entry((gw_ns.clone(), gw_name.clone(), listener.clone()))
                .or_default() += 1;
        }
    }
    attached
}

/// The status of Gateway `g` (`ns/name`): its conditions and listeners.
fn gateway_status(
    g: &Value,
    (ns, name): (&str, &str),
    attached: &BTreeMap<(String, String, String), i64>,
    layout: &Layout,
) -> Value {
    let gen_ = generation(g);
    let mut all_programmed = true;
    let all = listeners(g);
    let unsupported: Vec<&str> = all
        .iter()
        .filter(|l| l.protocol != "HTTP")
        .map(|l| l.name.as_str())
        .collect();
    let ls: Vec<Value> = all
        .iter()
        .map(|l| {
            let count = attached
                .get(&(ns.to_string(), name.to_string(), l.name.clone()))
                .copied()
                .unwrap_or(0);
            let (accepted, programmed) = if l.protocol != "HTTP" {
                all_programmed = false;
                (
                    condition("Accepted", false, "UnsupportedProtocol", &format!("protocol {} is not supported by sluice-proxy (HTTP only)", l.protocol), gen_),
                    condition("Programmed", false, "Invalid", "not served", gen_),
                )
            } else if !layout.ports.contains(&l.port) {
                all_programmed = false;
                (
                    condition("Accepted", true, "Accepted", "accepted", gen_),
                    condition("Programmed", false, "Pending", &format!("sluice-proxy does not listen on port {} yet: listeners are fixed at start, restart the proxy", l.port), gen_),
                )
            } else {
                (
                    condition("Accepted", true, "Accepted", "accepted", gen_),
                    condition("Programmed", true, "Programmed", &format!("served on {}:{}", layout.bind, l.port), gen_),
                )
            };
            // A TCP, TLS or UDP listener takes none of the route kinds
            // sluice-proxy serves.
            let kinds = if takes_http_routes(&l.protocol) {
                json!([{"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}])
            } else {
                json!([])
            };
            json!({
                "name": l.name,
                "attachedRoutes": count,
                "supportedKinds": kinds,
                "conditions": [accepted, programmed, condition("ResolvedRefs", true, "ResolvedRefs", "no references", gen_)],
            })
        })
        .collect();
    let programmed = if all_programmed {
        condition(
            "Programmed",
            true,
            "Programmed",
            "every listener is served by sluice-proxy",
            gen_,
        )
    } else if !all.is_empty() && unsupported.len() == all.len() {
        // No listener ever can be: nothing is pending.
        condition(
            "Programmed",
            false,
            "Invalid",
            "no listener can be served by sluice-proxy (HTTP only); see status.listeners",
            gen_,
        )
    } else {
        condition(
            "Programmed",
            false,
            "Pending",
            "a listener is not served; see status.listeners",
            gen_,
        )
    };
    // The spec's `ListenersNotValid`: with `Accepted` True while some
    // listener is served, False when none can be.
    let accepted = if unsupported.is_empty() {
        condition(
            "Accepted",
            true,
            "Accepted",
            "accepted by sluice-proxy",
            gen_,
        )
    } else {
        let some_served = unsupported.len() < all.len();
        let message = format!(
            "listener{} {} cannot be served (sluice-proxy serves HTTP only){}",
            if unsupported.len() == 1 { "" } else { "s" },
            unsupported.join(", "),
            if some_served { "; the others are" } else { "" }
        );
        condition("Accepted", some_served, "ListenersNotValid", &message, gen_)
    };
    json!({
        "conditions": [accepted, programmed],
        "listeners": ls,
    })
}

fn add_hosts(all: &mut Option<Vec<String>>, hosts: &[String]) {
    match all {
        // Any host already.
        None => {}
        Some(_) if hosts.is_empty() => *all = None,
        Some(all) => {
            for h in hosts {
                if !all.contains(h) {
                    all.push(h.clone());
                }
            }
        }
    }
}

/// A proxy config error at `path` (`routes[N].FIELD`, N an index into
/// `plans`) said in the Gateway API object's terms.
fn describe_error(
    kind: RouteKind,
    path: &str,
    message: &str,
    plans: &[(Plan, Vec<Match>)],
) -> String {
    let parsed = path
        .strip_prefix("routes[")
        .and_then(|s| s.split_once(']'))
        .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)));
    if let Some((n, rest)) = parsed
        && let Some((plan, matches)) = plans.get(n)
    {
        let refs: Vec<&Match> = matches.iter().collect();
        let field = match rest.strip_prefix('.').unwrap_or(rest) {
            "" => format!("spec.rules[{}]", plan.rule),
            rest => spec_field(kind, rest, plan, &refs),
        };
        return format!("{field}: {message}");
    }
    format!("{path}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            bind: "127.0.0.1".into(),
            admin_listen: "127.0.0.1:9901".into(),
            ports: [8080].into(),
        }
    }

    fn inputs(rules: Value) -> Inputs {
        Inputs {
            controller: "sluice.dev/gateway".into(),
            classes: vec![json!({"metadata": {"name": "sluice", "generation": 1}, "spec": {"controllerName": "sluice.dev/gateway"}})],
            gateways: vec![json!({"metadata": {"namespace": "default", "name": "gw", "generation": 2},
                "spec": {"gatewayClassName": "sluice", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP", "hostname": "*.example.com"}]}})],
            routes: vec![json!({"metadata": {"namespace": "default", "name": "web", "generation": 3},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com", "other.test"], "rules": rules}})],
            services: ["web", "web-canary", "web-beta"]
                .iter()
                .enumerate()
                .map(|(i, n)| json!({"metadata": {"namespace": "default", "name": n}, "spec": {"clusterIP": format!("10.0.0.{}", i + 1), "ports": [{"port": 80}]}}))
                .collect(),
            grpc_routes: Vec::new(),
        }
    }

    /// The served route `name` as JSON (the proxy's config format).
    fn served(o: &Outcome, name: &str) -> Value {
        let r = o
            .config
            .routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route {name} in {:?}", o.config.routes));
        serde_json::to_value(r).expect("a route serialises")
    }

    fn names(o: &Outcome) -> Vec<&str> {
        o.config.routes.iter().map(|r| r.name.as_str()).collect()
    }

    fn refusal(rules: Value) -> String {
        let o = build(&inputs(rules), &layout());
        let c = accepted(&o);
        assert_eq!(c["status"], "False", "{o:?}");
        assert_eq!(c["reason"], "UnsupportedValue", "{c}");
        assert!(o.config.routes.is_empty(), "nothing served half");
        c["message"].as_str().expect("message").to_string()
    }

    fn grpc_inputs(rules: Value) -> Inputs {
        let mut i = inputs(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        i.grpc_routes.push(json!({"metadata": {"namespace": "default", "name": "echo", "generation": 4},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"], "rules": rules}}));
        i
    }

    fn grpc_accepted(o: &Outcome) -> &Value {
        &o.grpc_routes[&("default".to_string(), "echo".to_string())][0]["conditions"][0]
    }

    fn accepted(o: &Outcome) -> &Value {
        &o.routes[&("default".to_string(), "web".to_string())][0]["conditions"][0]
    }

    #[test]
    fn a_route_the_whole_config_refuses_is_refused_alone_and_named() {
        // `/%7Eme` is `/~me` to the proxy (an escaped unreserved character),
        // not to the Gateway API: each route passes alone, the two together
        // do not. The newer one is refused, the routes around it served.
        let exact = |path: &str| {
            json!([{"matches": [{"path": {"type": "Exact", "value": path}}],
            "backendRefs": [{"name": "web", "port": 80}]}])
        };
        let mut i = inputs(exact("/~me"));
        for (name, created, path) in [
            ("escaped", "2024-01-01T00:00:00Z", "/%7Eme"),
            ("later", "2024-01-02T00:00:00Z", "/other"),
        ] {
            i.routes.push(json!({"metadata": {"namespace": "default", "name": name, "generation": 5,
                "creationTimestamp": created},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com", "other.test"],
                    "rules": exact(path)}}));
        }
        let o = build(&i, &layout());
        assert_eq!(names(&o), ["default/web/0", "default/later/0"], "{o:?}");
        assert!(o.config.validate().is_ok());
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        let status =
            |name: &str| &o.routes[&("default".to_string(), name.to_string())][0]["conditions"][0];
        assert_eq!(status("later")["status"], "True", "{o:?}");
        let refused = status("escaped");
        assert_eq!(refused["status"], "False", "{refused}");
        assert_eq!(refused["reason"], "UnsupportedValue", "{refused}");
        let message = refused["message"].as_str().expect("a message");
        assert!(
            message.starts_with("sluice-proxy cannot serve this HTTPRoute beside the older routes: spec.rules[0].matches[0]"),
            "{message}"
        );
        assert!(message.contains("same hosts and conditions"), "{message}");
    }

    #[test]
    fn exact_path_method_headers_and_query_become_one_match() {
        let o = build(
            &inputs(json!([{"matches": [{
                "path": {"type": "Exact", "value": "/login"},
                "method": "POST",
                "headers": [{"name": "X-Env", "value": "beta"}, {"name": "x-team", "value": "a"}],
                "queryParams": [{"name": "v", "value": "2"}, {"name": "Lang", "value": "en"}],
            }], "backendRefs": [{"name": "web", "port": 80}]}])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        let r = served(&o, "default/web/0");
        assert_eq!(
            r["matches"],
            json!([{"path_exact": "/login", "methods": ["POST"],
                "headers": [{"name": "x-env", "value": "beta"}, {"name": "x-team", "value": "a"}],
                "query": [{"name": "Lang", "value": "en"}, {"name": "v", "value": "2"}]}])
        );
        assert_eq!(r["path_prefix"], "/");
        assert!(o.config.validate().is_ok());
    }

    #[test]
    fn several_matches_of_a_rule_are_alternatives_of_one_route() {
        let o = build(
            &inputs(json!([{"matches": [
                {"path": {"type": "Exact", "value": "/a"}},
                {"path": {"type": "Exact", "value": "/b"}, "method": "GET"},
                {"path": {"type": "Exact", "value": "/a"}},
            ], "backendRefs": [{"name": "web", "port": 80}]}])),
            &layout(),
        );
        assert_eq!(
            served(&o, "default/web/0")["matches"],
            json!([{"path_exact": "/a"}, {"path_exact": "/b", "methods": ["GET"]}])
        );
    }

    #[test]
    fn header_modifiers_become_request_and_response_headers() {
        let o = build(
            &inputs(json!([{"filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Env", "value": "beta"}],
                    "add": [{"name": "x-trace", "value": "on"}],
                    "remove": ["x-debug"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "set": [{"name": "cache-control", "value": "no-store"}],
                    "remove": ["server"]}},
            ], "backendRefs": [{"name": "web", "port": 80}]}])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        let r = served(&o, "default/web/0");
        assert_eq!(
            r["request_headers"],
            json!({"set": [{"name": "X-Env", "value": "beta"}], "add": [{"name": "x-trace", "value": "on"}], "remove": ["x-debug"]})
        );
        assert_eq!(
            r["response_headers"],
            json!({"set": [{"name": "cache-control", "value": "no-store"}], "remove": ["server"]})
        );
        assert!(o.config.validate().is_ok());
    }

    #[test]
    fn modifiers_of_fields_the_proxy_owns_are_refused_naming_the_field() {
        for (filter, field) in [
            (
                json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "Host", "value": "x"}]}}),
                "spec.rules[0].filters[0].requestHeaderModifier.set[0].name: `Host`",
            ),
            (
                json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-a", "value": "1"}, {"name": "X-Forwarded-For", "value": "1.2.3.4"}]}}),
                "spec.rules[0].filters[0].requestHeaderModifier.add[1].name: `X-Forwarded-For`",
            ),
            (
                json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["Content-Length"]}}),
                "spec.rules[0].filters[0].responseHeaderModifier.remove[0]: `Content-Length`",
            ),
            (
                json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "transfer-encoding", "value": "chunked"}]}}),
                "responseHeaderModifier.set[0].name: `transfer-encoding`",
            ),
            (
                json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-a"]}}),
                "requestHeaderModifier.set[0].name: `x-a` is both set and removed",
            ),
        ] {
            let message = refusal(
                json!([{"filters": [filter], "backendRefs": [{"name": "web", "port": 80}]}]),
            );
            assert!(message.contains(field), "{message} does not name {field}");
        }
    }

    #[test]
    fn unsupported_values_refuse_the_whole_route() {
        for (rules, field) in [
            (
                json!([{"backendRefs": [{"name": "web", "port": 80}]}, {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "filters": [{"type": "URLRewrite", "urlRewrite": {}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[1].filters[0].type: URLRewrite",
            ),
            (
                json!([{"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].path.type: RegularExpression",
            ),
            (
                json!([{"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "a.*"}]}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].headers[0].type: RegularExpression",
            ),
            (
                json!([{"matches": [{"queryParams": [{"name": "a", "value": "1"}, {"type": "RegularExpression", "name": "x", "value": "a.*"}]}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].queryParams[1].type: RegularExpression",
            ),
            (
                json!([{"backendRefs": [{"name": "web", "port": 80}, {"name": "web-canary", "port": 80}, {"name": "web-beta", "port": 80}]}]),
                "spec.rules[0].backendRefs: sluice-proxy splits a rule between a stable and a canary, at most two backends, not 3",
            ),
            (
                json!([{"backendRefs": [{"name": "web", "port": 80, "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}]}]}]),
                "spec.rules[0].backendRefs[0].filters",
            ),
            (
                json!([{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {}}, {"type": "RequestHeaderModifier", "requestHeaderModifier": {}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].filters[1].type: a second RequestHeaderModifier",
            ),
            (
                json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}]}]),
                "spec.rules[0].backendRefs: a rule without backendRefs",
            ),
        ] {
            let message = refusal(rules);
            assert!(message.contains(field), "{message} does not name {field}");
        }
    }

    #[test]
    fn grpc_refusals_name_the_field() {
        for (rules, field) in [
            (
                json!([{"matches": [{"method": {"method": "Add"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].method: a method match without a service",
            ),
            (
                json!([{"matches": [{"method": {"type": "RegularExpression", "service": "shop[.].*"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].method.type: RegularExpression",
            ),
            (
                json!([{"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].filters[0].type: ExtensionRef",
            ),
        ] {
            let o = build(&grpc_inputs(rules), &layout());
            let c = grpc_accepted(&o);
            assert_eq!(c["status"], "False");
            assert_eq!(c["reason"], "UnsupportedValue");
            assert!(c["message"].as_str().unwrap().contains(field), "{c}");
            assert!(
                !names(&o).iter().any(|n| n.starts_with("grpc:")),
                "nothing served half"
            );
            // The HTTPRoute beside it is still served.
            assert_eq!(accepted(&o)["status"], "True");
        }
    }

    #[test]
    fn hostnames_must_intersect() {
        let mut i = inputs(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        i.routes[0]["spec"]["hostnames"] = json!(["other.test"]);
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["reason"], "NoMatchingListenerHostname");
        assert_eq!(
            intersect("*.example.com", "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(intersect("*.example.com", "example.com"), None);
    }

    #[test]
    fn weighted_rule_and_ab_rule_make_one_route() {
        let o = build(
            &inputs(json!([
                {"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}]},
                {"matches": [{"headers": [{"name": "X-Canary", "value": "yes"}]}], "backendRefs": [{"name": "web-canary", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(names(&o), ["default/web/0"]);
        let r = served(&o, "default/web/0");
        assert_eq!(r["hosts"], json!(["web.example.com"]));
        assert_eq!(r["stable"], "http://10.0.0.1:80");
        assert_eq!(r["canary"], "http://10.0.0.2:80");
        assert_eq!(r["canary_weight"], 10.0);
        assert!(r.get("canary_match").is_none(), "{r}");
        assert_eq!(
            r["matches"],
            json!([{"path_prefix": "/"}, {"path_prefix": "/", "headers": [{"name": "x-canary", "value": "yes"}], "backend": "canary"}])
        );
        assert!(o.config.validate().is_ok());
    }

    #[test]
    fn a_path_prefix_is_one_path_segments_match() {
        for value in ["/api", "/api/"] {
            let o = build(
                &inputs(
                    json!([{"matches": [{"path": {"type": "PathPrefix", "value": value}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                ),
                &layout(),
            );
            assert_eq!(
                served(&o, "default/web/0")["matches"],
                json!([{"path_segments": "/api"}]),
                "{value}"
            );
        }
        // `/` stays the shorthand the proxy looks up fastest.
        let o = build(
            &inputs(
                json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
            ),
            &layout(),
        );
        let r = served(&o, "default/web/0");
        assert_eq!(r["path_prefix"], "/");
        assert!(r.get("matches").is_none(), "{r}");
    }

    /// Review finding 1 (g/1.json): a route's real `Exact /api` is served
    /// beside a newer route's `PathPrefix /api` with a header or method:
    /// no exact half of the prefix competes with it any more.
    #[test]
    fn an_exact_path_and_a_newer_prefix_with_conditions_are_both_served() {
        let mut i = inputs(
            json!([{"matches": [{"path": {"type": "Exact", "value": "/api"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
        );
        i.routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        i.routes.push(json!({"metadata": {"namespace": "default", "name": "prefixhdr", "generation": 1, "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-v", "value": "1"}]}], "backendRefs": [{"name": "web-canary", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}], "backendRefs": [{"name": "web-beta", "port": 80}]},
                ]}}));
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(
            served(&o, "default/web/0")["matches"],
            json!([{"path_exact": "/api"}])
        );
        assert_eq!(
            served(&o, "default/prefixhdr/0")["matches"],
            json!([{"path_segments": "/api", "headers": [{"name": "x-v", "value": "1"}]}])
        );
        assert_eq!(
            served(&o, "default/prefixhdr/1")["matches"],
            json!([{"path_segments": "/api", "methods": ["GET"]}])
        );
        assert!(o.config.validate().is_ok());
    }

    /// Review finding 3 (g/10.json): an A/B rule joins the weighted rule
    /// as a match to the canary that keeps its own header, so a request
    /// with both headers goes to the earlier rule's backend (a tie the
    /// proxy breaks by config order).
    #[test]
    fn an_ab_rule_keeps_its_own_header_in_the_precedence() {
        let o = build(
            &inputs(json!([
                {"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}]},
                {"matches": [{"headers": [{"name": "x-canary", "value": "always"}]}], "backendRefs": [{"name": "web-canary", "port": 80}]},
                {"matches": [{"headers": [{"name": "x-team", "value": "a"}]}], "backendRefs": [{"name": "web-beta", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(names(&o), ["default/web/0", "default/web/2"]);
        assert_eq!(
            served(&o, "default/web/0")["matches"],
            json!([{"path_prefix": "/"}, {"path_prefix": "/", "headers": [{"name": "x-canary", "value": "always"}], "backend": "canary"}])
        );
        assert_eq!(
            served(&o, "default/web/2")["matches"],
            json!([{"path_prefix": "/", "headers": [{"name": "x-team", "value": "a"}]}])
        );
        assert!(o.config.validate().is_ok());
    }

    /// Review finding 3 (g/15.json): a newer route's match identical to
    /// an older route's A/B match is the older's.
    #[test]
    fn a_newer_route_does_not_take_an_older_ab_match() {
        let mut i = inputs(json!([
            {"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}]},
            {"matches": [{"headers": [{"name": "x-canary", "value": "always"}]}], "backendRefs": [{"name": "web-canary", "port": 80}]},
        ]));
        i.routes[0]["spec"]["hostnames"] = json!(["web.example.com"]);
        i.routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        i.routes.push(json!({"metadata": {"namespace": "default", "name": "newer", "generation": 1, "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"],
                "rules": [{"matches": [{"headers": [{"name": "x-canary", "value": "always"}]}], "backendRefs": [{"name": "web-beta", "port": 80}]}]}}));
        let o = build(&i, &layout());
        let newer = &o.routes[&("default".to_string(), "newer".to_string())][0]["conditions"][0];
        assert_eq!(newer["status"], "True", "{o:?}");
        assert!(
            newer["message"].as_str().unwrap().contains(
                "older route's (the same hostnames and conditions), which keeps them: default/web/0"
            ),
            "{newer}"
        );
        assert_eq!(
            names(&o),
            ["default/web/0"],
            "the newer rule has no match left"
        );
        assert!(o.config.validate().is_ok());
    }

    #[test]
    fn a_rule_to_the_weighted_rules_canary_is_an_ab_rule_whatever_its_conditions() {
        let o = build(
            &inputs(json!([
                {"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/beta"}, "method": "POST", "headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "2"}]}],
                 "backendRefs": [{"name": "web-canary", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(names(&o), ["default/web/0"]);
        assert_eq!(
            served(&o, "default/web/0")["matches"][1],
            json!({"path_segments": "/beta", "methods": ["POST"], "headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "2"}], "backend": "canary"})
        );
    }

    #[test]
    fn a_header_rule_that_is_not_an_ab_rule_is_served_as_its_own_route() {
        let weighted = json!({"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}]});
        for (header_rule, why) in [
            (
                json!({"matches": [{"headers": [{"name": "x-beta", "value": "1"}]}], "backendRefs": [{"name": "web-beta", "port": 80}]}),
                "another backend than the canary",
            ),
            (
                json!({"matches": [{"headers": [{"name": "x-beta", "value": "1"}]}], "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}], "backendRefs": [{"name": "web-canary", "port": 80}]}),
                "a filter the weighted rule does not have",
            ),
            (
                json!({"matches": [{"headers": [{"name": "x-beta", "value": "1"}]}], "timeouts": {"request": "5s"}, "backendRefs": [{"name": "web-canary", "port": 80}]}),
                "another timeout",
            ),
        ] {
            let o = build(
                &inputs(json!([weighted.clone(), header_rule.clone()])),
                &layout(),
            );
            assert_eq!(accepted(&o)["status"], "True", "{why}: {o:?}");
            assert_eq!(names(&o), ["default/web/0", "default/web/1"], "{why}");
            let w = served(&o, "default/web/0");
            assert_eq!(w["path_prefix"], "/", "{why}: {w}");
            assert!(w.get("matches").is_none(), "{why}: {w}");
            assert_eq!(w["canary_weight"], 10.0);
            assert_eq!(
                served(&o, "default/web/1")["matches"],
                json!([{"path_prefix": "/", "headers": [{"name": "x-beta", "value": "1"}]}]),
                "{why}"
            );
            assert!(o.config.validate().is_ok(), "{why}");
        }
        // Without a weighted rule, a header rule is a route of its own:
        // no backend becomes another rule's canary.
        let o = build(
            &inputs(json!([
                {"backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}], "backendRefs": [{"name": "web-canary", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(names(&o), ["default/web/0", "default/web/1"]);
        assert!(served(&o, "default/web/0").get("canary").is_none());
    }

    #[test]
    fn an_earlier_rule_keeps_a_match_and_an_exact_path_beats_a_prefix() {
        let o = build(
            &inputs(json!([
                {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"path": {"type": "Exact", "value": "/a"}}, {"path": {"type": "Exact", "value": "/b"}}], "backendRefs": [{"name": "web-canary", "port": 80}]},
                {"matches": [{"path": {"type": "Exact", "value": "/b"}}], "backendRefs": [{"name": "web-beta", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(
            names(&o),
            ["default/web/0", "default/web/1"],
            "rule 2 is shadowed whole"
        );
        assert_eq!(
            served(&o, "default/web/0")["matches"],
            json!([{"path_segments": "/a"}])
        );
        assert_eq!(
            served(&o, "default/web/1")["matches"],
            json!([{"path_exact": "/a"}, {"path_exact": "/b"}])
        );
    }

    /// Review finding 6 (g/8.json): the older route keeps an identical
    /// match; the newer is accepted and serves its other matches.
    #[test]
    fn a_newer_route_with_an_identical_match_is_served_with_its_other_matches() {
        let mut i = inputs(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        i.routes[0]["spec"]["hostnames"] = json!(["web.example.com"]);
        i.routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        i.routes.push(json!({"metadata": {"namespace": "default", "name": "r2", "generation": 1, "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}, {"path": {"type": "PathPrefix", "value": "/special"}}],
                           "backendRefs": [{"name": "web-canary", "port": 80}]}]}}));
        let o = build(&i, &layout());
        let r2 = &o.routes[&("default".to_string(), "r2".to_string())][0]["conditions"][0];
        assert_eq!(r2["status"], "True", "{o:?}");
        assert!(
            r2["message"].as_str().unwrap().contains("1 of its matches"),
            "{r2}"
        );
        assert_eq!(served(&o, "default/web/0")["path_prefix"], "/");
        assert_eq!(
            served(&o, "default/r2/0")["matches"],
            json!([{"path_segments": "/special"}])
        );
        // The same two created in the other order: the other keeps `/`.
        i.routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-03T00:00:00Z");
        let o = build(&i, &layout());
        assert_eq!(
            served(&o, "default/r2/0")["matches"],
            json!([{"path_prefix": "/"}, {"path_segments": "/special"}])
        );
        assert_eq!(names(&o), ["default/r2/0"], "web's only match is r2's");
        assert_eq!(accepted(&o)["status"], "True");
        assert!(o.config.validate().is_ok());
    }

    #[test]
    fn grpc_methods_become_paths_to_http2_backends() {
        let o = build(
            &grpc_inputs(json!([
                {"matches": [{"method": {"service": "shop.Cart", "method": "Add"}}], "backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"method": {"type": "Exact", "service": "shop.Cart"}, "headers": [{"name": "x-tenant", "value": "a"}]}],
                 "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-served-by", "value": "sluice"}]}}],
                 "backendRefs": [{"name": "web", "port": 80, "weight": 1}, {"name": "web-canary", "port": 80, "weight": 1}]},
                {"matches": [{"headers": [{"name": "x-tenant", "value": "b"}]}], "backendRefs": [{"name": "web-beta", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(grpc_accepted(&o)["status"], "True", "{o:?}");
        let r = served(&o, "grpc:default/echo/0");
        assert_eq!(r["matches"], json!([{"path_exact": "/shop.Cart/Add"}]));
        assert_eq!(r["protocol"], "http2");
        let r = served(&o, "grpc:default/echo/1");
        assert_eq!(
            r["matches"],
            json!([{"path_segments": "/shop.Cart", "headers": [{"name": "x-tenant", "value": "a"}]}])
        );
        assert_eq!(r["canary_weight"], 50.0);
        assert_eq!(
            r["response_headers"]["add"],
            json!([{"name": "x-served-by", "value": "sluice"}])
        );
        let r = served(&o, "grpc:default/echo/2");
        assert_eq!(
            r["matches"],
            json!([{"path_prefix": "/", "headers": [{"name": "x-tenant", "value": "b"}]}])
        );
        assert_eq!(r["protocol"], "http2");
        assert!(o.config.validate().is_ok());
    }

    #[test]
    fn a_grpc_header_rule_to_the_canary_is_an_ab_rule() {
        let o = build(
            &grpc_inputs(json!([
                {"matches": [{"method": {"service": "shop.Cart"}}],
                 "backendRefs": [{"name": "web", "port": 80, "weight": 9}, {"name": "web-canary", "port": 80, "weight": 1}]},
                {"matches": [{"method": {"service": "shop.Cart"}, "headers": [{"name": "x-canary", "value": "always"}]}],
                 "backendRefs": [{"name": "web-canary", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(grpc_accepted(&o)["status"], "True", "{o:?}");
        let r = served(&o, "grpc:default/echo/0");
        assert_eq!(r["canary_weight"], 10.0);
        assert_eq!(
            r["matches"],
            json!([{"path_segments": "/shop.Cart"}, {"path_segments": "/shop.Cart", "headers": [{"name": "x-canary", "value": "always"}], "backend": "canary"}])
        );
        assert!(!names(&o).contains(&"grpc:default/echo/1"));
    }

    /// Review finding 6 (g/6.json): an HTTPRoute and a GRPCRoute sharing
    /// a hostname on a listener: the older is accepted, the newer not.
    #[test]
    fn of_a_grpc_route_and_an_http_route_sharing_a_hostname_the_older_is_accepted() {
        let mut i = grpc_inputs(
            json!([{"matches": [{"method": {"service": "shop.Cart"}}], "backendRefs": [{"name": "web-canary", "port": 80}]}]),
        );
        i.routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        i.grpc_routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-02T00:00:00Z");
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        let g = grpc_accepted(&o);
        assert_eq!(g["status"], "False", "{o:?}");
        assert_eq!(g["reason"], "Conflicted");
        assert!(
            g["message"]
                .as_str()
                .unwrap()
                .contains("HTTPRoute default/web is older"),
            "{g}"
        );
        assert_eq!(names(&o), ["default/web/0"]);
        // The GRPCRoute older: it is the one accepted.
        i.grpc_routes[0]["metadata"]["creationTimestamp"] = json!("2025-12-31T00:00:00Z");
        let o = build(&i, &layout());
        assert_eq!(grpc_accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(accepted(&o)["status"], "False");
        assert_eq!(names(&o), ["grpc:default/echo/0"]);
        // Other hostnames: both served, one listener.
        i.grpc_routes[0]["spec"]["hostnames"] = json!(["grpc.example.com"]);
        i.routes[0]["spec"]["hostnames"] = json!(["web.example.com"]);
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(grpc_accepted(&o)["status"], "True", "{o:?}");
        let listener = &o.gateways[&("default".to_string(), "gw".to_string())]["listeners"][0];
        assert_eq!(listener["attachedRoutes"], 2);
        assert!(listener["supportedKinds"].to_string().contains("GRPCRoute"));
        assert!(o.config.validate().is_ok());
    }

    /// A listener of a protocol sluice-proxy does not serve makes the
    /// Gateway's `Accepted` say `ListenersNotValid`: True while another
    /// listener is served, False when none is.
    #[test]
    fn a_gateway_with_an_unserved_listener_says_listeners_not_valid() {
        let mut i = inputs(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        let gateway_accepted = |i: &Inputs| {
            let o = build(i, &layout());
            o.gateways[&("default".to_string(), "gw".to_string())]["conditions"][0].clone()
        };
        let ok = gateway_accepted(&i);
        assert_eq!(
            (ok["status"].as_str(), ok["reason"].as_str()),
            (Some("True"), Some("Accepted"))
        );
        i.gateways[0]["spec"]["listeners"] = json!([
            {"name": "web", "port": 8080, "protocol": "HTTP"},
            {"name": "secure", "port": 8443, "protocol": "HTTPS"},
        ]);
        let partly = gateway_accepted(&i);
        assert_eq!(partly["status"], "True", "{partly}");
        assert_eq!(partly["reason"], "ListenersNotValid");
        assert!(
            partly["message"]
                .as_str()
                .unwrap()
                .contains("listener secure cannot be served"),
            "{partly}"
        );
        i.gateways[0]["spec"]["listeners"] = json!([
            {"name": "secure", "port": 8443, "protocol": "HTTPS"},
            {"name": "tcp", "port": 9000, "protocol": "TCP"},
        ]);
        let none = gateway_accepted(&i);
        assert_eq!(none["status"], "False", "{none}");
        assert_eq!(none["reason"], "ListenersNotValid");
        assert!(
            none["message"]
                .as_str()
                .unwrap()
                .contains("listeners secure, tcp"),
            "{none}"
        );
        // And its `Programmed` is Invalid, not Pending: nothing will come.
        let o = build(&i, &layout());
        let programmed = &o.gateways[&("default".to_string(), "gw".to_string())]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Programmed")
            .unwrap()
            .clone();
        assert_eq!(
            (programmed["status"].as_str(), programmed["reason"].as_str()),
            (Some("False"), Some("Invalid")),
            "{programmed}"
        );
    }

    /// Routes attach to a listener by their parentRefs and its
    /// allowedRoutes alone, whatever the listener's own conditions: an
    /// HTTPS listener (not served: sluice-proxy does not terminate a
    /// Gateway's TLS) and one on a port the proxy does not listen on yet
    /// count the routes attached to them, which are `Accepted` and say they
    /// are not served; a TCP listener takes neither route kind.
    #[test]
    fn routes_attached_to_unserved_listeners_are_counted_there() {
        let mut i = inputs(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        let gw = ("default".to_string(), "gw".to_string());
        let listener = |o: &Outcome, n: usize| o.gateways[&gw]["listeners"][n].clone();
        // HTTPS only.
        i.gateways[0]["spec"]["listeners"] =
            json!([{"name": "secure", "port": 8443, "protocol": "HTTPS"}]);
        let o = build(&i, &layout());
        let c = accepted(&o);
        assert_eq!(c["status"], "True", "{c}");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("attached to listener secure (HTTPS); not served"),
            "{c}"
        );
        assert!(names(&o).is_empty(), "nothing served");
        let secure = listener(&o, 0);
        assert_eq!(secure["attachedRoutes"], 1, "{secure}");
        assert_eq!(secure["conditions"][0]["reason"], "UnsupportedProtocol");
        let g = &o.gateways[&gw]["conditions"][0];
        assert_eq!(
            (g["status"].as_str(), g["reason"].as_str()),
            (Some("False"), Some("ListenersNotValid"))
        );
        // HTTP and HTTPS: served on the HTTP listener, counted on both.
        i.gateways[0]["spec"]["listeners"] = json!([
            {"name": "web", "port": 8080, "protocol": "HTTP"},
            {"name": "secure", "port": 8443, "protocol": "HTTPS"},
            {"name": "tcp", "port": 9000, "protocol": "TCP"},
        ]);
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["status"], "True");
        assert_eq!(accepted(&o)["message"], "served by sluice-proxy");
        assert_eq!(names(&o), ["default/web/0"]);
        assert_eq!(listener(&o, 0)["attachedRoutes"], 1);
        assert_eq!(listener(&o, 1)["attachedRoutes"], 1);
        assert_eq!(listener(&o, 2)["attachedRoutes"], 0);
        assert_eq!(listener(&o, 2)["supportedKinds"], json!([]));
        // By sectionName, to the TCP listener: not allowed there.
        i.routes[0]["spec"]["parentRefs"] = json!([{"name": "gw", "sectionName": "tcp"}]);
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["reason"], "NotAllowedByListeners");
        // An HTTP listener on a port the proxy does not listen on yet.
        i.routes[0]["spec"]["parentRefs"] = json!([{"name": "gw"}]);
        i.gateways[0]["spec"]["listeners"] =
            json!([{"name": "later", "port": 8081, "protocol": "HTTP"}]);
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["status"], "True");
        assert!(names(&o).is_empty());
        assert_eq!(listener(&o, 0)["attachedRoutes"], 1);
    }

    /// Review finding 2 (g/5.json): one route, two listeners of one port
    /// (by sectionName, or one parentRef selecting both): one Sluice
    /// route per rule on the union of the hostnames, every parent
    /// accepted.
    #[test]
    fn a_route_on_two_listeners_of_one_port_serves_both_hostnames() {
        let mut i = inputs(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        i.gateways[0]["spec"]["listeners"] = json!([
            {"name": "foo", "port": 8080, "protocol": "HTTP", "hostname": "foo.example.com"},
            {"name": "bar", "port": 8080, "protocol": "HTTP", "hostname": "bar.example.com"},
        ]);
        i.routes[0]["spec"]["hostnames"] = json!([]);
        i.routes[0]["spec"]["parentRefs"] =
            json!([{"name": "gw", "sectionName": "foo"}, {"name": "gw", "sectionName": "bar"}]);
        let o = build(&i, &layout());
        let parents = &o.routes[&("default".to_string(), "web".to_string())];
        assert_eq!(parents.len(), 2);
        for p in parents {
            assert_eq!(p["conditions"][0]["status"], "True", "{p}");
        }
        assert_eq!(names(&o), ["default/web/0"]);
        assert_eq!(
            served(&o, "default/web/0")["hosts"],
            json!(["foo.example.com", "bar.example.com"])
        );
        let ls = &o.gateways[&("default".to_string(), "gw".to_string())]["listeners"];
        assert_eq!(ls[0]["attachedRoutes"], 1);
        assert_eq!(ls[1]["attachedRoutes"], 1);
        // One parentRef selecting both listeners: the same.
        i.routes[0]["spec"]["parentRefs"] = json!([{"name": "gw"}]);
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(
            served(&o, "default/web/0")["hosts"],
            json!(["foo.example.com", "bar.example.com"])
        );
        // A listener of another port: that parentRef is refused, the
        // first is served.
        let mut layout2 = layout();
        layout2.ports.insert(9090);
        i.gateways[0]["spec"]["listeners"][1]["port"] = json!(9090);
        i.routes[0]["spec"]["parentRefs"] =
            json!([{"name": "gw", "sectionName": "foo"}, {"name": "gw", "sectionName": "bar"}]);
        let o = build(&i, &layout2);
        let parents = &o.routes[&("default".to_string(), "web".to_string())];
        assert_eq!(parents[0]["conditions"][0]["status"], "True", "{o:?}");
        assert_eq!(parents[1]["conditions"][0]["status"], "False");
        assert!(
            parents[1]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("port 8080"),
            "{}",
            parents[1]
        );
        assert_eq!(
            served(&o, "default/web/0")["hosts"],
            json!(["foo.example.com"])
        );
        assert!(o.config.validate().is_ok());
    }

    #[test]
    fn listeners_of_one_port_merge_and_of_two_ports_are_refused() {
        let mut i = inputs(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        i.gateways[0]["spec"]["listeners"] = json!([
            {"name": "a", "port": 8080, "protocol": "HTTP", "hostname": "web.example.com"},
            {"name": "b", "port": 8080, "protocol": "HTTP", "hostname": "other.test"},
        ]);
        let o = build(&i, &layout());
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(
            served(&o, "default/web/0")["hosts"],
            json!(["web.example.com", "other.test"])
        );
        i.gateways[0]["spec"]["listeners"][1]["port"] = json!(9090);
        let o = build(&i, &layout());
        let c = accepted(&o);
        assert_eq!(c["status"], "False");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("ports [8080, 9090]"),
            "{c}"
        );
    }

    /// Review finding 7: a rule whose backendRef does not resolve is
    /// answered 500 by the proxy; the route's other rules are served.
    #[test]
    fn a_rule_with_an_invalid_backend_ref_is_answered_500_and_the_others_served() {
        for (bad, reason) in [
            (json!({"name": "nope", "port": 80}), "BackendNotFound"),
            (json!({"name": "web", "port": 81}), "BackendNotFound"),
            (
                json!({"group": "example.com", "kind": "Bucket", "name": "web", "port": 80}),
                "InvalidKind",
            ),
            (
                json!({"name": "web", "namespace": "other", "port": 80}),
                "RefNotPermitted",
            ),
        ] {
            let o = build(
                &inputs(json!([
                    {"backendRefs": [{"name": "web", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": [bad.clone()]},
                ])),
                &layout(),
            );
            let parent = &o.routes[&("default".to_string(), "web".to_string())][0];
            assert_eq!(parent["conditions"][0]["status"], "True", "{bad}: {parent}");
            assert_eq!(parent["conditions"][1]["status"], "False", "{bad}");
            assert_eq!(parent["conditions"][1]["reason"], reason, "{bad}");
            assert!(
                parent["conditions"][1]["message"]
                    .as_str()
                    .unwrap()
                    .contains("spec.rules[1].backendRefs[0]"),
                "{parent}"
            );
            assert_eq!(names(&o), ["default/web/0", "default/web/1"], "{bad}");
            assert_eq!(served(&o, "default/web/0")["stable"], "http://10.0.0.1:80");
            let r = served(&o, "default/web/1");
            assert_eq!(r["direct_response"], json!({"status": 500}), "{bad}: {r}");
            assert!(r.get("stable").is_none(), "{r}");
            assert_eq!(r["matches"], json!([{"path_segments": "/v2"}]));
            assert!(o.config.validate().is_ok(), "{bad}");
        }
        // A weighted rule with an invalid second backendRef: the whole
        // rule is answered 500 (the proxy has no arm that answers 500) ...
        let o = build(
            &inputs(
                json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 1}, {"name": "nope", "port": 80, "weight": 1}]}]),
            ),
            &layout(),
        );
        assert_eq!(
            served(&o, "default/web/0")["direct_response"],
            json!({"status": 500})
        );
        // ... unless it has weight 0: then it gets no request anyway.
        let o = build(
            &inputs(
                json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 1}, {"name": "nope", "port": 80, "weight": 0}]}]),
            ),
            &layout(),
        );
        let r = served(&o, "default/web/0");
        assert_eq!(r["stable"], "http://10.0.0.1:80", "{r}");
        assert!(r.get("canary").is_none(), "{r}");
        let parent = &o.routes[&("default".to_string(), "web".to_string())][0];
        assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound");
        // Every weight 0 sends the rule's requests nowhere: 500, accepted,
        // with one backendRef or two.
        for refs in [
            json!([{"name": "web", "port": 80, "weight": 0}]),
            json!([{"name": "web", "port": 80, "weight": 0}, {"name": "web-canary", "port": 80, "weight": 0}]),
        ] {
            let o = build(&inputs(json!([{ "backendRefs": refs.clone() }])), &layout());
            let r = served(&o, "default/web/0");
            assert_eq!(r["direct_response"], json!({"status": 500}), "{refs}: {r}");
            let parent = &o.routes[&("default".to_string(), "web".to_string())][0];
            assert_eq!(
                parent["conditions"][0]["status"], "True",
                "{refs}: {parent}"
            );
            assert!(o.config.validate().is_ok(), "{refs}");
        }
    }

    /// Weights whose share is not a whole number of 0.01 % (the proxy's
    /// unit) are rounded to the nearest: 1:2 is 66.67 % to the second
    /// backendRef, 2:1 33.33 %, 1:6 14.29 %; the route is accepted.
    #[test]
    fn weights_between_two_basis_points_are_rounded_to_the_nearest() {
        for (stable, canary, want) in [
            (1, 2, 66.67),
            (2, 1, 33.33),
            (1, 6, 85.71),
            (6, 1, 14.29),
            (9, 1, 10.0),
        ] {
            let o = build(
                &inputs(
                    json!([{"backendRefs": [{"name": "web", "port": 80, "weight": stable}, {"name": "web-canary", "port": 80, "weight": canary}]}]),
                ),
                &layout(),
            );
            let r = served(&o, "default/web/0");
            assert_eq!(r["canary_weight"], json!(want), "{stable}:{canary}: {r}");
            let parent = &o.routes[&("default".to_string(), "web".to_string())][0];
            assert_eq!(parent["conditions"][0]["status"], "True", "{parent}");
            assert!(o.config.validate().is_ok());
        }
    }

    #[test]
    fn an_invalid_mirror_backend_drops_the_mirror_and_is_reported() {
        let o = build(
            &inputs(json!([{
                "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "nope", "port": 80}}}],
                "backendRefs": [{"name": "web", "port": 80}]}])),
            &layout(),
        );
        let parent = &o.routes[&("default".to_string(), "web".to_string())][0];
        assert_eq!(parent["conditions"][0]["status"], "True", "{parent}");
        assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound");
        assert!(
            parent["conditions"][1]["message"]
                .as_str()
                .unwrap()
                .contains("spec.rules[0].filters[0].requestMirror.backendRef"),
            "{parent}"
        );
        let r = served(&o, "default/web/0");
        assert_eq!(r["stable"], "http://10.0.0.1:80");
        assert!(r.get("mirror").is_none(), "{r}");
        assert!(r.get("canary").is_none(), "{r}");
    }

    /// Review finding 8: only the first header match, query parameter
    /// match and modifier entry of a name counts; none refuses the route.
    #[test]
    fn of_repeated_names_the_first_counts() {
        let o = build(
            &inputs(json!([{
                "matches": [{"headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}],
                             "queryParams": [{"name": "v", "value": "1"}, {"name": "v", "value": "2"}, {"name": "V", "value": "3"}]}],
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "X-S", "value": "1"}, {"name": "x-s", "value": "2"}],
                        "add": [{"name": "x-d", "value": "1"}, {"name": "X-D", "value": "2"}]}},
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-r", "value": "1"}, {"name": "X-R", "value": "2"}]}},
                ],
                "backendRefs": [{"name": "web", "port": 80}]}])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        let r = served(&o, "default/web/0");
        assert_eq!(
            r["matches"],
            json!([{"path_prefix": "/", "headers": [{"name": "x-a", "value": "1"}],
                    "query": [{"name": "V", "value": "3"}, {"name": "v", "value": "1"}]}])
        );
        assert_eq!(
            r["request_headers"]["set"],
            json!([{"name": "X-S", "value": "1"}])
        );
        assert_eq!(
            r["request_headers"]["add"],
            json!([{"name": "x-d", "value": "1"}])
        );
        assert_eq!(
            r["response_headers"]["set"],
            json!([{"name": "x-r", "value": "1"}])
        );
        assert!(o.config.validate().is_ok());
    }

    /// Review finding 12: what the proxy refuses is named by the Gateway
    /// API object's field, and the message says nothing of older routes.
    #[test]
    fn proxy_refusals_name_the_gateway_api_field() {
        for (rules, field) in [
            (
                json!([{"backendRefs": [{"name": "web", "port": 80}]},
                       {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
                        "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}, {"name": "X-A", "value": "2"}, {"name": "x-b", "value": "a\r\nb"}]}}],
                        "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[1].filters[0].requestHeaderModifier.set[2].value",
            ),
            (
                json!([{"filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "bad name", "value": "1"}]}}],
                        "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].filters[0].responseHeaderModifier.add[0].name",
            ),
            (
                json!([{"matches": [{"headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "a\u{1}"}]}],
                        "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].headers[1].value",
            ),
            (
                json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}, {"method": "get"}],
                        "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[1].method",
            ),
            (
                json!([{"timeouts": {"request": "soon"}, "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].timeouts.request",
            ),
        ] {
            let message = refusal(rules);
            assert!(message.contains(field), "{message} does not name {field}");
            assert!(!message.contains("routes["), "{message}");
            assert!(!message.contains("older route"), "{message}");
        }
    }

    /// Review finding 13: 300 routes of 16 rules of 4 matches each are
    /// checked once each and once together (the time is printed, not
    /// asserted: `cargo test ... -- --nocapture`).
    #[test]
    fn three_hundred_routes_translate_in_one_pass() {
        let mut i = inputs(json!([]));
        i.routes.clear();
        for n in 0..300 {
            let rules: Vec<Value> = (0..16)
                .map(|r| {
                    let matches: Vec<Value> = (0..4)
                        .map(|m| json!({"path": {"type": "PathPrefix", "value": format!("/r{n}/{r}/{m}")}, "headers": [{"name": "x-m", "value": format!("{m}")}]}))
                        .collect();
                    json!({"matches": matches, "backendRefs": [{"name": "web", "port": 80, "weight": 9}, {"name": "web-canary", "port": 80, "weight": 1}]})
                })
                .collect();
            i.routes.push(json!({"metadata": {"namespace": "default", "name": format!("r{n}"), "generation": 1,
                    "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", n / 60, n % 60)},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"], "rules": rules}}));
        }
        let started = std::time::Instant::now();
        let o = build(&i, &layout());
        eprintln!(
            "translated 300 routes (4800 rules, 19200 matches) in {:?}",
            started.elapsed()
        );
        assert_eq!(o.config.routes.len(), 4800);
        assert!(
            o.routes
                .values()
                .all(|p| p[0]["conditions"][0]["status"] == "True")
        );
    }
}
