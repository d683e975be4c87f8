//! From Gateway API objects (as JSON) to the proxy's [`Config`] and the
//! statuses to write. Pure: no I/O, so every rule is unit-tested here.
//!
//! How an `HTTPRoute` or a `GRPCRoute` maps onto Sluice routes (the
//! decisions the Gateway API leaves to an implementation are in
//! `docs/gateway-api.md`):
//!
//! - **One Sluice route per rule**, named `NS/NAME/RULE_INDEX` for an
//!   HTTPRoute and `grpc:NS/NAME/RULE_INDEX` for a GRPCRoute (the `route`
//!   label of every metric), on the listener's port, with `hosts` the
//!   intersection of the route's and the listener's hostnames and
//!   `matches` the rule's matches (alternatives). A route attached to
//!   listeners of several ports is refused: a route name is one port.
//! - **Matches.** HTTPRoute: path `Exact` → `path_exact`; `PathPrefix /p`
//!   → `path_exact /p` plus `path_prefix /p/`, because the Gateway API's
//!   prefix matches whole path elements (`/p` matches `/p` and `/p/x`,
//!   never `/px`) where the proxy's is a string prefix (`PathPrefix /`
//!   stays the prefix `/`); `method` → `methods`; `Exact` header and
//!   query-parameter matches, several of each, → `headers` / `query`.
//!   GRPCRoute: method `Exact` with service and method → `path_exact
//!   /SERVICE/METHOD`, service alone → `path_prefix /SERVICE/`, no method
//!   match → `/`; header matches as above; the backends are spoken to in
//!   HTTP/2 (`protocol: http2`). `RegularExpression` paths, headers,
//!   query parameters and gRPC methods, and a gRPC method without a
//!   service (`/*/METHOD` is not a path match), are refused.
//! - **Rule order.** A match an earlier rule of the same route already has
//!   is dropped from the later rule (the Gateway API gives it to the
//!   earlier one), except that a rule's own `Exact` path beats the exact
//!   half of another rule's `PathPrefix` (exact beats prefix). A rule left
//!   without matches receives no request and makes no Sluice route.
//!   Between routes the proxy's precedence decides (exact path, longest
//!   prefix, method, more headers, more query parameters, then the older
//!   route, as the Gateway API); an identical (hostnames, match) of a
//!   newer route refuses that route, except the exact half of a prefix:
//!   it gives way to an older route's match, and an older route's gives
//!   way to a newer route's `Exact` path (exact beats prefix).
//! - **Backends.** One backendRef is the stable; with two, the first is
//!   the stable and the second the canary, at `weight₂ / (weight₁ +
//!   weight₂)`, split exactly; the share must be a whole number of basis
//!   points (0.01 %). More than two backendRefs are refused: Sluice splits
//!   a stable and a canary, the pair a progressive release moves.
//! - **A/B rules.** A rule with one backendRef whose every match is a path
//!   and exactly one `Exact` header match (the same paths with each of its
//!   headers) is Sluice's A/B rule when another rule of the same route has
//!   exactly those paths and nothing else, the same header modifiers and
//!   timeout, no mirror, and as canary that backend (or one backendRef,
//!   whose canary it then becomes at weight 0): it joins that rule as
//!   `canary_match`, so its requests are counted on the same `route` as
//!   `decision="match"`. That serves every request as the route says,
//!   because a request carrying the header goes to that backend either
//!   way. Any other rule with header matches (another backend, other
//!   filters, a method or query condition, several headers in a match) is
//!   served as its own route with its matches: the proxy's precedence
//!   (more header conditions beat fewer on the same path) sends the
//!   requests it matches there, as the Gateway API does.
//! - **Filters** (rule level): `RequestHeaderModifier` and
//!   `ResponseHeaderModifier` → the route's `request_headers` /
//!   `response_headers`; a field the proxy owns (`Host`, `Content-Length`,
//!   `Transfer-Encoding`, hop-by-hop and forwarding fields, `X-Sluice-*`)
//!   is refused naming the field, and so is a name set twice or both set
//!   and removed. `RequestMirror` (on a rule with one backendRef) is the
//!   route's `mirror` to the mirrored Service, at the filter's percent.
//!   Other filters, a second filter of one type and backendRef-level
//!   filters are refused.
//! - **Timeouts** (HTTPRoute): `timeouts.backendRequest` (else
//!   `timeouts.request`) is the route's `timeouts.request`.
//! - Anything the proxy cannot serve as written refuses the whole route
//!   for that parent: `Accepted: False`, reason `UnsupportedValue`, a
//!   message naming the field; none of its rules is served.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::config::{Config, RouteConfig};

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

/// The prefix of the Sluice route names made of GRPCRoutes, so that a
/// GRPCRoute and an HTTPRoute of one name never share a route (or its
/// metrics): `grpc:NS/NAME/INDEX`. (`:` is in no Kubernetes name.)
pub const GRPC_NAME_PREFIX: &str = "grpc:";

/// Whether `name` is a route name this controller writes, `NS/NAME/INDEX`
/// (an HTTPRoute's rule) or `grpc:NS/NAME/INDEX` (a GRPCRoute's).
pub fn is_route_name(name: &str) -> bool {
    let name = name.strip_prefix(GRPC_NAME_PREFIX).unwrap_or(name);
    let mut parts = name.split('/');
    let (Some(ns), Some(n), Some(i), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let dns = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    dns(ns, 63)
        && dns(n, 253)
        && !i.is_empty()
        && i.len() <= 2
        && i.bytes().all(|b| b.is_ascii_digit())
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

/// A backendRef, resolved or not.
#[derive(Debug, Clone, PartialEq)]
struct Backend {
    namespace: String,
    name: String,
    port: u16,
    weight: u64,
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
    Prefix(String),
}

/// One match of a rule, as the proxy's `RouteMatch` will carry it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Match {
    path: PathMatch,
    method: Option<String>,
    /// Names lower-cased, sorted.
    headers: Vec<(String, String)>,
    /// Sorted.
    query: Vec<(String, String)>,
    /// The exact half of a `PathPrefix` (see the module docs): it gives
    /// way to a rule's own `Exact` match of the same path and conditions.
    synthetic: bool,
}

impl Match {
    /// The same match whatever its origin (to find duplicates).
    fn key(&self) -> Match {
        Match {
            synthetic: false,
            ..self.clone()
        }
    }

    fn path_only(&self) -> bool {
        self.method.is_none() && self.headers.is_empty() && self.query.is_empty()
    }
}

/// A header modifier filter (names as written).
#[derive(Debug, Clone, Default, PartialEq)]
struct Modifier {
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
}

/// One rule as read, before the A/B rules are joined.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    index: usize,
    matches: Vec<Match>,
    backends: Vec<Backend>,
    mirror: Option<(Backend, u64)>,
    timeout: Option<String>,
    request_headers: Option<Modifier>,
    response_headers: Option<Modifier>,
}

impl Rule {
    /// Whether it can be an A/B rule: one backendRef, no mirror, and every
    /// match a path plus exactly one header match.
    fn ab_candidate(&self) -> bool {
        self.backends.len() == 1
            && self.mirror.is_none()
            && self
                .matches
                .iter()
                .all(|m| m.headers.len() == 1 && m.method.is_none() && m.query.is_empty())
    }

    /// Whether A/B requests joined into it see exactly what `ab` says:
    /// the same header modifiers and timeout, and no mirror.
    fn same_treatment(&self, ab: &Rule) -> bool {
        self.mirror.is_none()
            && self.request_headers == ab.request_headers
            && self.response_headers == ab.response_headers
            && self.timeout == ab.timeout
    }
}

/// One Sluice route (per listener) to make: a rule with its A/B rules,
/// mirror, timeout and header modifiers.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    rule: usize,
    matches: Vec<Match>,
    stable: Backend,
    canary: Option<Backend>,
    canary_bp: u32,
    ab: Vec<(String, String)>,
    mirror: Option<(Backend, u64)>,
    request_timeout: Option<String>,
    request_headers: Option<Modifier>,
    response_headers: Option<Modifier>,
}

fn backend_of(r: &Value, route_ns: &str, at: &str) -> Result<Backend, Refusal> {
    let group = str_at(r, "/group");
    let kind = match str_at(r, "/kind") {
        "" => "Service",
        k => k,
    };
    if !group.is_empty() || kind != "Service" {
        return Err(Refusal {
            reason: "InvalidKind",
            message: format!(
                "{at}: {kind}.{group} is not a Service; sluice-proxy sends only to Services"
            ),
        });
    }
    let namespace = match str_at(r, "/namespace") {
        "" => route_ns,
        ns => ns,
    };
    if namespace != route_ns {
        return Err(Refusal {
            reason: "RefNotPermitted",
            message: format!(
                "{at}: Service {namespace}/{} is in another namespace; sluice-proxy does not read ReferenceGrants, so only Services in the route's namespace are allowed",
                str_at(r, "/name")
            ),
        });
    }
    let Some(port) = r["port"].as_u64().filter(|p| (1..=65535).contains(p)) else {
        return Err(unsupported(format!(
            "{at}.port: a Service backendRef needs a port"
        )));
    };
    Ok(Backend {
        namespace: namespace.to_string(),
        name: str_at(r, "/name").to_string(),
        port: port as u16,
        weight: r["weight"].as_u64().unwrap_or(1),
    })
}

/// The path conditions of an HTTPRoute match: `Exact` as is; `PathPrefix`
/// `/p` (or `/p/`) as exact `/p` plus prefix `/p/`, the Gateway API's
/// element-wise prefix; `PathPrefix /` as the prefix `/`.
fn http_paths(m: &Value, at: &str) -> Result<Vec<(PathMatch, bool)>, Refusal> {
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
        "Exact" => Ok(vec![(PathMatch::Exact(value.to_string()), false)]),
        "PathPrefix" => {
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                Ok(vec![(PathMatch::Prefix("/".to_string()), false)])
            } else {
                Ok(vec![
                    (PathMatch::Exact(trimmed.to_string()), true),
                    (PathMatch::Prefix(format!("{trimmed}/")), false),
                ])
            }
        }
        other => Err(unsupported(format!(
            "{at}.path.type: {other} is not supported by sluice-proxy (Exact and PathPrefix only)"
        ))),
    }
}

/// The path of a GRPCRoute match: service and method → exact
/// `/SERVICE/METHOD`; service alone → prefix `/SERVICE/`; neither → `/`.
fn grpc_path(m: &Value, at: &str) -> Result<PathMatch, Refusal> {
    let method = &m["method"];
    if method.is_null() {
        return Ok(PathMatch::Prefix("/".to_string()));
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
        (false, true) => Ok(PathMatch::Prefix(format!("/{service}/"))),
        (true, false) => Err(unsupported(format!(
            "{at}.method: a method match without a service is not supported by sluice-proxy (it would be the path /*/{name}, which its path matches cannot say; name the service)"
        ))),
        (true, true) => Ok(PathMatch::Prefix("/".to_string())),
    }
}

/// `Exact` name/value matches (headers or query parameters).
fn exact_pairs(
    list: &Value,
    at: &str,
    what: &str,
    lower: bool,
) -> Result<Vec<(String, String)>, Refusal> {
    let mut pairs = Vec::new();
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
        pairs.push((name, str_at(h, "/value").to_string()));
    }
    pairs.sort();
    pairs.dedup();
    Ok(pairs)
}

/// A `RequestHeaderModifier` / `ResponseHeaderModifier`: fields the proxy
/// owns are refused, and so are the combinations it cannot apply in one
/// pass (a name set twice, or both set and removed).
fn modifier_of(f: &Value, at: &str) -> Result<Modifier, Refusal> {
    let owned = |name: &str, at: String| -> Result<(), Refusal> {
        if crate::fields::proxy_owned_field(name.as_bytes()) {
            Err(unsupported(format!(
                "{at}: `{name}` is a field sluice-proxy owns (it sets it, or frames the message or connection by it), so a filter may not change it"
            )))
        } else {
            Ok(())
        }
    };
    let mut m = Modifier::default();
    for (list, field) in [("set", &mut m.set), ("add", &mut m.add)] {
        for (k, h) in f[list].as_array().into_iter().flatten().enumerate() {
            let name = str_at(h, "/name");
            owned(name, format!("{at}.{list}[{k}].name"))?;
            field.push((name.to_string(), str_at(h, "/value").to_string()));
        }
    }
    for (k, n) in f["remove"].as_array().into_iter().flatten().enumerate() {
        let name = n.as_str().unwrap_or("");
        owned(name, format!("{at}.remove[{k}]"))?;
        m.remove.push(name.to_string());
    }
    for (k, (name, _)) in m.set.iter().enumerate() {
        if m.set[..k].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(unsupported(format!(
                "{at}.set[{k}].name: `{name}` is set twice (field names are case-insensitive)"
            )));
        }
        if m.remove.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(unsupported(format!(
                "{at}.set[{k}].name: `{name}` is both set and removed"
            )));
        }
    }
    Ok(m)
}

/// Reads one rule, or the first refusal.
fn read_rule(kind: RouteKind, i: usize, rule: &Value, ns: &str) -> Result<Rule, Refusal> {
    let at = format!("spec.rules[{i}]");
    let default_matches = vec![json!({})];
    let raw = rule["matches"]
        .as_array()
        .filter(|m| !m.is_empty())
        .unwrap_or(&default_matches);
    let mut matches: Vec<Match> = Vec::new();
    for (j, m) in raw.iter().enumerate() {
        let at = format!("{at}.matches[{j}]");
        let headers = exact_pairs(&m["headers"], &at, "headers", true)?;
        let (paths, method, query) = match kind {
            RouteKind::Http => (
                http_paths(m, &at)?,
                m["method"].as_str().map(str::to_string),
                exact_pairs(&m["queryParams"], &at, "queryParams", false)?,
            ),
            RouteKind::Grpc => (vec![(grpc_path(m, &at)?, false)], None, Vec::new()),
        };
        for (path, synthetic) in paths {
            let m = Match {
                path,
                method: method.clone(),
                headers: headers.clone(),
                query: query.clone(),
                synthetic,
            };
            if !matches.iter().any(|o| o.key() == m.key()) {
                matches.push(m);
            }
        }
    }
    let mut mirror = None;
    let mut request_headers = None;
    let mut response_headers = None;
    for (j, f) in rule["filters"].as_array().into_iter().flatten().enumerate() {
        let fat = format!("{at}.filters[{j}]");
        match str_at(f, "/type") {
            "RequestMirror" if mirror.is_none() => {
                let backend = backend_of(
                    &f["requestMirror"]["backendRef"],
                    ns,
                    &format!("{fat}.requestMirror.backendRef"),
                )?;
                let percent = f["requestMirror"]["percent"].as_u64().unwrap_or(100);
                mirror = Some((backend, percent));
            }
            "RequestMirror" => {
                return Err(unsupported(format!(
                    "{fat}.type: sluice-proxy mirrors a route to one Service; a second RequestMirror is not supported"
                )));
            }
            "RequestHeaderModifier" if request_headers.is_none() => {
                request_headers = Some(modifier_of(
                    &f["requestHeaderModifier"],
                    &format!("{fat}.requestHeaderModifier"),
                )?);
            }
            "ResponseHeaderModifier" if response_headers.is_none() => {
                response_headers = Some(modifier_of(
                    &f["responseHeaderModifier"],
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
    let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
    let mut backends = Vec::new();
    for (j, r) in refs.iter().enumerate() {
        if r["filters"].as_array().is_some_and(|f| !f.is_empty()) {
            return Err(unsupported(format!(
                "{at}.backendRefs[{j}].filters: per-backend filters are not supported by sluice-proxy (put the filter on the rule)"
            )));
        }
        backends.push(backend_of(r, ns, &format!("{at}.backendRefs[{j}]"))?);
    }
    if backends.is_empty() {
        return Err(unsupported(format!(
            "{at}.backendRefs: a rule without backendRefs is not supported by sluice-proxy"
        )));
    }
    if backends.len() > 2 {
        return Err(unsupported(format!(
            "{at}.backendRefs: sluice-proxy splits a rule between a stable and a canary, at most two backends, not {}",
            backends.len()
        )));
    }
    if backends.len() == 1 && backends[0].weight == 0 {
        return Err(unsupported(format!(
            "{at}.backendRefs[0].weight: 0 sends no request anywhere"
        )));
    }
    if mirror.is_some() && backends.len() == 2 {
        return Err(unsupported(format!(
            "{at}.filters: RequestMirror is supported by sluice-proxy on a rule with one backendRef"
        )));
    }
    let timeout = rule
        .pointer("/timeouts/backendRequest")
        .or_else(|| rule.pointer("/timeouts/request"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Rule {
        index: i,
        matches,
        backends,
        mirror,
        timeout,
        request_headers,
        response_headers,
    })
}

/// The canary share of a rule's two backends in basis points.
fn canary_bp(rule: &Rule) -> Result<u32, Refusal> {
    let [stable, canary] = &rule.backends[..] else {
        return Ok(0);
    };
    let at = format!("spec.rules[{}]", rule.index);
    let total = stable.weight + canary.weight;
    if total == 0 {
        return Err(unsupported(format!("{at}.backendRefs: every weight is 0")));
    }
    if (canary.weight * 10_000) % total != 0 {
        return Err(unsupported(format!(
            "{at}.backendRefs: weights {}:{} give the second backend a share that is not a whole number of 0.01 %, which sluice-proxy cannot split exactly",
            stable.weight, canary.weight
        )));
    }
    Ok((canary.weight * 10_000 / total) as u32)
}

/// Reads one route's rules into plans, or the first refusal.
fn plan_route(route: &Value, kind: RouteKind) -> Result<Vec<Plan>, Refusal> {
    let ns = str_at(route, "/metadata/namespace");
    let mut rules = Vec::new();
    for (i, rule) in route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        rules.push(read_rule(kind, i, rule, ns)?);
    }
    // A match an earlier rule already has never reaches a later one (the
    // Gateway API's rule order); a rule's own `Exact` beats the exact
    // half of another rule's `PathPrefix`, as exact beats prefix.
    let mut seen: BTreeMap<Match, (usize, bool)> = BTreeMap::new();
    for (r, rule) in rules.iter().enumerate() {
        for m in &rule.matches {
            match seen.get(&m.key()) {
                Some((_, true)) if !m.synthetic => {
                    seen.insert(m.key(), (r, false));
                }
                Some(_) => {}
                None => {
                    seen.insert(m.key(), (r, m.synthetic));
                }
            }
        }
    }
    for (r, rule) in rules.iter_mut().enumerate() {
        rule.matches.retain(|m| seen[&m.key()].0 == r);
    }
    let mut plans: Vec<Plan> = Vec::new();
    for rule in &rules {
        if rule.matches.is_empty() {
            continue;
        }
        plans.push(Plan {
            rule: rule.index,
            matches: rule.matches.clone(),
            stable: rule.backends[0].clone(),
            canary: rule.backends.get(1).cloned(),
            canary_bp: canary_bp(rule)?,
            ab: Vec::new(),
            mirror: rule.mirror.clone(),
            request_timeout: rule.timeout.clone(),
            request_headers: rule.request_headers.clone(),
            response_headers: rule.response_headers.clone(),
        });
    }
    // A/B rules join the weighted rule of their path when that serves
    // every request exactly as the route says (see the module docs);
    // otherwise they stay routes of their own.
    for rule in rules
        .iter()
        .filter(|r| r.ab_candidate() && !r.matches.is_empty())
    {
        let backend = &rule.backends[0];
        let paths: BTreeSet<&PathMatch> = rule.matches.iter().map(|m| &m.path).collect();
        let headers: BTreeSet<&(String, String)> =
            rule.matches.iter().map(|m| &m.headers[0]).collect();
        // Every (path, header) pair: the rule is "these paths, with one of
        // these headers", so it can ride on a rule of exactly these paths.
        if rule.matches.len() != paths.len() * headers.len() {
            continue;
        }
        let target = plans.iter().position(|p| {
            let t = rules
                .iter()
                .find(|r| r.index == p.rule)
                .expect("a plan has a rule");
            p.matches.iter().all(Match::path_only)
                && p.matches.iter().map(|m| &m.path).collect::<BTreeSet<_>>() == paths
                && t.same_treatment(rule)
                && p.canary.as_ref().is_none_or(|c| c.same_service(backend))
        });
        let Some(target) = target else {
            continue;
        };
        let plan = &mut plans[target];
        plan.canary.get_or_insert_with(|| backend.clone());
        for h in headers {
            if !plan.ab.contains(h) {
                plan.ab.push(h.clone());
            }
        }
        plans.retain(|p| p.rule != rule.index);
    }
    Ok(plans)
}

/// The `ResolvedRefs` check: every backend Service (and port) exists.
fn resolve(
    plans: &[Plan],
    services: &BTreeMap<(String, String), &Value>,
) -> Result<BTreeMap<(String, u16), String>, Refusal> {
    let mut urls = BTreeMap::new();
    for plan in plans {
        let all = std::iter::once(&plan.stable)
            .chain(plan.canary.iter())
            .chain(plan.mirror.iter().map(|(b, _)| b));
        for b in all {
            let Some(svc) = services.get(&(b.namespace.clone(), b.name.clone())) else {
                return Err(Refusal {
                    reason: "BackendNotFound",
                    message: format!("Service {}/{} does not exist", b.namespace, b.name),
                });
            };
            let has_port = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["port"].as_u64() == Some(b.port as u64)));
            if !has_port {
                return Err(Refusal {
                    reason: "BackendNotFound",
                    message: format!("Service {}/{} has no port {}", b.namespace, b.name, b.port),
                });
            }
            let ip = str_at(svc, "/spec/clusterIP");
            if ip.is_empty() || ip == "None" {
                return Err(Refusal {
                    reason: "UnsupportedValue",
                    message: format!(
                        "Service {}/{} has no cluster IP (headless or ExternalName); sluice-proxy sends to a Service's cluster IP",
                        b.namespace, b.name
                    ),
                });
            }
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            urls.insert(
                (b.name.clone(), b.port),
                format!("http://{host}:{}", b.port),
            );
        }
    }
    Ok(urls)
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

fn pairs(list: &[(String, String)]) -> Value {
    list.iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect()
}

fn modifier_json(m: &Modifier) -> Value {
    json!({"set": pairs(&m.set), "add": pairs(&m.add), "remove": m.remove})
}

fn match_json(m: &Match) -> Value {
    let mut j = match &m.path {
        PathMatch::Exact(p) => json!({"path_exact": p}),
        PathMatch::Prefix(p) => json!({"path_prefix": p}),
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
    j
}

/// The Sluice route of `plan` with `matches` (a plain prefix stays the
/// `path_prefix` shorthand, which the proxy looks up fastest).
fn route_config(
    name: String,
    kind: RouteKind,
    hosts: &[String],
    listener: Option<&str>,
    plan: &Plan,
    matches: &[&Match],
    urls: &BTreeMap<(String, u16), String>,
) -> RouteConfig {
    let url = |b: &Backend| urls[&(b.name.clone(), b.port)].clone();
    let mut r = json!({
        "name": name,
        "hosts": hosts,
        "stable": url(&plan.stable),
        "canary_weight": plan.canary_bp as f64 / 100.0,
        "canary_match": plan.ab.iter().map(|(h, v)| json!({"header": h, "value": v})).collect::<Vec<_>>(),
    });
    match matches {
        [m] if m.path_only() && matches!(m.path, PathMatch::Prefix(_)) => {
            let PathMatch::Prefix(p) = &m.path else {
                unreachable!("checked above")
            };
            r["path_prefix"] = json!(p);
        }
        _ => r["matches"] = matches.iter().map(|m| match_json(m)).collect(),
    }
    if kind == RouteKind::Grpc {
        r["protocol"] = json!("http2");
    }
    if let Some(c) = &plan.canary {
        r["canary"] = json!(url(c));
    }
    if let Some((m, percent)) = &plan.mirror {
        r["canary"] = json!(url(m));
        r["mirror"] = json!({"percent": *percent as f64});
    }
    if let Some(t) = &plan.request_timeout {
        r["timeouts"] = json!({"request": t});
    }
    if let Some(m) = &plan.request_headers {
        r["request_headers"] = modifier_json(m);
    }
    if let Some(m) = &plan.response_headers {
        r["response_headers"] = modifier_json(m);
    }
    if let Some(l) = listener {
        r["listener"] = json!(l);
    }
    serde_json::from_value(r).expect("a route built from known fields")
}

/// Drops match `m` (the exact half of its `PathPrefix`) from the older
/// route `older` of `config`, unless it is that route's last match (then
/// the proxy refuses the newer route as a duplicate).
fn give_way(config: &mut Config, older: &str, m: &Match) {
    let Ok(gone) = serde_json::from_value::<crate::config::RouteMatch>(match_json(m)) else {
        return;
    };
    if let Some(route) = config.routes.iter_mut().find(|r| r.name == older)
        && route.matches.len() > 1
    {
        route.matches.retain(|r| *r != gone);
    }
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

/// Translates everything: the config to serve and every status to write.
pub fn build(inputs: &Inputs, layout: &Layout) -> Outcome {
    let mut config = base_config(layout);
    let first_port = layout.ports.iter().next().copied();
    let classes = our_classes(inputs);
    let mut outcome = Outcome {
        config: config.clone(),
        classes: BTreeMap::new(),
        gateways: BTreeMap::new(),
        routes: BTreeMap::new(),
        grpc_routes: BTreeMap::new(),
    };
    for c in &inputs.classes {
        if str_at(c, "/spec/controllerName") == inputs.controller {
            outcome.classes.insert(
                str_at(c, "/metadata/name").to_string(),
                vec![condition(
                    "Accepted",
                    true,
                    "Accepted",
                    "served by sluice-proxy",
                    generation(c),
                )],
            );
        }
    }
    let gateways: BTreeMap<(String, String), &Value> = inputs
        .gateways
        .iter()
        .filter(|g| classes.contains(str_at(g, "/spec/gatewayClassName")))
        .map(|g| (key(g), g))
        .collect();
    let services: BTreeMap<(String, String), &Value> =
        inputs.services.iter().map(|s| (key(s), s)).collect();
    // Attached route counts per (gateway, listener name).
    let mut attached: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    // Oldest first: on a conflict the older route keeps its paths.
    // Oldest first, then by namespace/name (the Gateway API's order), so
    // config order breaks the proxy's remaining ties the same way.
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
    // (port, sorted hosts, match) of the routes served so far → the
    // Sluice route serving it and whether it is the exact half of a prefix.
    let mut served: BTreeMap<(u16, Vec<String>, Match), (String, bool)> = BTreeMap::new();
    for (kind, route) in routes {
        let (ns, name) = key(route);
        let gen_ = generation(route);
        let planned = plan_route(route, kind);
        let resolved = planned.as_ref().ok().map(|p| resolve(p, &services));
        let route_hosts: Vec<String> = route
            .pointer("/spec/hostnames")
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let mut parents = Vec::new();
        for parent in route
            .pointer("/spec/parentRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let group = match parent["group"].as_str() {
                None => GROUP,
                Some(g) => g,
            };
            let parent_kind = parent["kind"].as_str().unwrap_or("Gateway");
            let gw_ns = match str_at(parent, "/namespace") {
                "" => ns.as_str(),
                n => n,
            };
            let gw_key = (gw_ns.to_string(), str_at(parent, "/name").to_string());
            if group != GROUP || parent_kind != "Gateway" {
                continue;
            }
            let Some(gateway) = gateways.get(&gw_key) else {
                continue;
            };
            let status = |accepted: Value, resolved: Value| {
                json!({
                    "parentRef": parent,
                    "controllerName": inputs.controller,
                    "conditions": [accepted, resolved],
                })
            };
            let resolved_cond = match &resolved {
                Some(Err(r)) => condition("ResolvedRefs", false, r.reason, &r.message, gen_),
                Some(Ok(_)) => condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "every backend Service resolved",
                    gen_,
                ),
                None => condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "not checked: the route is not accepted",
                    gen_,
                ),
            };
            if let Err(r) = &planned {
                if matches!(r.reason, "InvalidKind" | "RefNotPermitted") {
                    parents.push(status(
                        condition(
                            "Accepted",
                            true,
                            "Accepted",
                            "accepted; a backendRef is not resolved",
                            gen_,
                        ),
                        condition("ResolvedRefs", false, r.reason, &r.message, gen_),
                    ));
                } else {
                    parents.push(status(
                        condition("Accepted", false, r.reason, &r.message, gen_),
                        resolved_cond,
                    ));
                }
                continue;
            }
            // The listeners this parentRef selects.
            let section = parent["sectionName"].as_str();
            let port = parent["port"].as_u64();
            let selected: Vec<Listener> = listeners(gateway)
                .into_iter()
                .filter(|l| section.is_none_or(|s| s == l.name))
                .filter(|l| port.is_none_or(|p| p == l.port as u64))
                .collect();
            if selected.is_empty() {
                parents.push(status(
                    condition(
                        "Accepted",
                        false,
                        "NoMatchingParent",
                        "no listener of the Gateway has this sectionName and port",
                        gen_,
                    ),
                    resolved_cond,
                ));
                continue;
            }
            let allowed: Vec<&Listener> = selected
                .iter()
                .filter(|l| l.protocol == "HTTP")
                .filter(|l| l.from == "All" || (l.from == "Same" && gw_ns == ns))
                .collect();
            if allowed.is_empty() {
                parents.push(status(
                    condition("Accepted", false, "NotAllowedByListeners", "no selected HTTP listener allows routes from this namespace (allowedRoutes.namespaces.from Same or All; Selector is not supported by sluice-proxy)", gen_),
                    resolved_cond,
                ));
                continue;
            }
            // (listener, hosts) pairs.
            let mut targets = Vec::new();
            for l in &allowed {
                let hosts: Option<Vec<String>> = match (&l.hostname, route_hosts.is_empty()) {
                    (None, _) => Some(route_hosts.clone()),
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
                parents.push(status(
                    condition(
                        "Accepted",
                        false,
                        "NoMatchingListenerHostname",
                        "no hostname of the route matches a selected listener's hostname",
                        gen_,
                    ),
                    resolved_cond,
                ));
                continue;
            }
            let urls = match &resolved {
                Some(Ok(urls)) => urls,
                _ => {
                    // Accepted, but not served until every backend resolves.
                    parents.push(status(
                        condition(
                            "Accepted",
                            true,
                            "Accepted",
                            "accepted; not served until every backendRef resolves",
                            gen_,
                        ),
                        resolved_cond,
                    ));
                    continue;
                }
            };
            let plans = planned.as_ref().expect("checked above");
            // Listeners of one port are one set of hosts on one socket.
            let mut by_port: BTreeMap<u16, Option<Vec<String>>> = BTreeMap::new();
            for (l, hosts) in &targets {
                let entry = by_port.entry(l.port).or_insert_with(|| Some(Vec::new()));
                match entry {
                    // A listener of this port takes any host already.
                    None => {}
                    Some(_) if hosts.is_empty() => *entry = None,
                    Some(all) => {
                        for h in hosts {
                            if !all.contains(h) {
                                all.push(h.clone());
                            }
                        }
                    }
                }
            }
            let by_port: BTreeMap<u16, Vec<String>> = by_port
                .into_iter()
                .map(|(p, h)| (p, h.unwrap_or_default()))
                .collect();
            if by_port.len() > 1 {
                let ports: Vec<u16> = by_port.keys().copied().collect();
                parents.push(status(
                    condition("Accepted", false, "UnsupportedValue", &format!("the parentRef selects listeners on ports {ports:?}; sluice-proxy serves a route on one port (its metrics are labelled by the route's name): select one with sectionName or port"), gen_),
                    resolved_cond,
                ));
                continue;
            }
            let mut candidate = config.clone();
            let mut keys = Vec::new();
            for (port, hosts) in &by_port {
                let listener = (Some(*port) != first_port).then(|| listener_name(*port));
                let mut sorted = hosts.clone();
                sorted.sort();
                for plan in plans {
                    let route_name = kind.route_name(&ns, &name, plan.rule);
                    let mut matches = Vec::new();
                    for m in &plan.matches {
                        let key = (*port, sorted.clone(), m.key());
                        match served.get(&key) {
                            // The exact half of a prefix gives way to an older route's match.
                            Some(_) if m.synthetic => continue,
                            // An exact path beats an older route's prefix: its exact half goes.
                            Some((older, true)) => {
                                give_way(&mut candidate, older, m);
                            }
                            _ => {}
                        }
                        keys.push((key, (route_name.clone(), m.synthetic)));
                        matches.push(m);
                    }
                    candidate.routes.push(route_config(
                        route_name,
                        kind,
                        hosts,
                        listener.as_deref(),
                        plan,
                        &matches,
                        urls,
                    ));
                }
            }
            let unbound: Vec<u16> = targets
                .iter()
                .map(|(l, _)| l.port)
                .filter(|p| !layout.ports.contains(p))
                .collect();
            if !unbound.is_empty() {
                parents.push(status(
                    condition("Accepted", true, "Accepted", &format!("accepted; not served: sluice-proxy does not listen on port {unbound:?} yet (listeners are fixed at start; restart the proxy)"), gen_),
                    resolved_cond,
                ));
                continue;
            }
            match candidate.validate() {
                Ok(_) => {
                    config = candidate;
                    served.extend(keys);
                    for (l, _) in &targets {
                        *attached
                            .entry((gw_key.0.clone(), gw_key.1.clone(), l.name.clone()))
                            .or_default() += 1;
                    }
                    parents.push(status(
                        condition("Accepted", true, "Accepted", "served by sluice-proxy", gen_),
                        resolved_cond,
                    ));
                }
                Err(errors) => parents.push(status(
                    condition("Accepted", false, "UnsupportedValue", &format!("sluice-proxy refused the routes made of this {} (an older route may already serve the same hostnames and match): {errors}", kind.kind()), gen_),
                    resolved_cond,
                )),
            }
        }
        if !parents.is_empty() {
            match kind {
                RouteKind::Http => outcome.routes.insert((ns, name), parents),
                RouteKind::Grpc => outcome.grpc_routes.insert((ns, name), parents),
            };
        }
    }
    for ((ns, name), g) in &gateways {
        let gen_ = generation(g);
        let mut all_programmed = true;
        let ls: Vec<Value> = listeners(g)
            .iter()
            .map(|l| {
                let count = attached
                    .get(&(ns.clone(), name.clone(), l.name.clone()))
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
                json!({
                    "name": l.name,
                    "attachedRoutes": count,
                    "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}],
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
        } else {
            condition(
                "Programmed",
                false,
                "Pending",
                "a listener is not served; see status.listeners",
                gen_,
            )
        };
        outcome.gateways.insert(
            (ns.clone(), name.clone()),
            json!({
                "conditions": [condition("Accepted", true, "Accepted", "accepted by sluice-proxy", gen_), programmed],
                "listeners": ls,
            }),
        );
    }
    outcome.config = config;
    outcome
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
    fn weighted_rule_and_ab_rule_make_one_route() {
        let o = build(
            &inputs(json!([
                {"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}]},
                {"matches": [{"headers": [{"name": "X-Canary", "value": "yes"}]}], "backendRefs": [{"name": "web-canary", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(o.config.routes.len(), 1);
        let r = &o.config.routes[0];
        assert_eq!(r.name, "default/web/0");
        assert_eq!(r.hosts, vec!["web.example.com".to_string()]);
        assert_eq!(r.stable, "http://10.0.0.1:80");
        assert_eq!(r.canary.as_deref(), Some("http://10.0.0.2:80"));
        assert_eq!(r.canary_weight, 10.0);
        assert_eq!(r.canary_match.len(), 1);
        assert_eq!(r.canary_match[0].header.as_deref(), Some("x-canary"));
        assert!(o.config.validate().is_ok());
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
    fn a_path_prefix_matches_whole_path_elements() {
        for value in ["/api", "/api/"] {
            let o = build(
                &inputs(
                    json!([{"matches": [{"path": {"type": "PathPrefix", "value": value}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                ),
                &layout(),
            );
            assert_eq!(
                served(&o, "default/web/0")["matches"],
                json!([{"path_exact": "/api"}, {"path_prefix": "/api/"}]),
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
                json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}, {"name": "X-A", "value": "2"}]}}),
                "requestHeaderModifier.set[1].name: `X-A` is set twice",
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
                json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 1}, {"name": "web-canary", "port": 80, "weight": 2}]}]),
                "spec.rules[0].backendRefs: weights 1:2",
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
    fn an_ab_rule_joins_the_prefix_rule_of_its_path() {
        let o = build(
            &inputs(json!([
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-Canary", "value": "yes"}]}],
                 "backendRefs": [{"name": "web-canary", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                 "backendRefs": [{"name": "web", "port": 80, "weight": 3}, {"name": "web-canary", "port": 80, "weight": 1}]},
            ])),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(names(&o), ["default/web/1"]);
        let r = served(&o, "default/web/1");
        assert_eq!(
            r["matches"],
            json!([{"path_exact": "/api"}, {"path_prefix": "/api/"}])
        );
        assert_eq!(r["canary_weight"], 25.0);
        assert_eq!(
            r["canary_match"],
            json!([{"header": "x-canary", "value": "yes"}])
        );
    }

    #[test]
    fn an_ab_rule_gives_a_one_backend_rule_its_canary_at_weight_0() {
        let o = build(
            &inputs(json!([
                {"backendRefs": [{"name": "web", "port": 80}]},
                {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}, {"headers": [{"name": "x-beta", "value": "1"}]}],
                 "backendRefs": [{"name": "web-canary", "port": 80}]},
            ])),
            &layout(),
        );
        assert_eq!(names(&o), ["default/web/0"]);
        let r = served(&o, "default/web/0");
        assert_eq!(r["canary"], "http://10.0.0.2:80");
        assert_eq!(r["canary_weight"], 0.0);
        assert_eq!(
            r["canary_match"],
            json!([{"header": "x-beta", "value": "1"}, {"header": "x-canary", "value": "yes"}])
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
                json!({"matches": [{"headers": [{"name": "x-beta", "value": "1"}, {"name": "x-team", "value": "a"}]}], "backendRefs": [{"name": "web-canary", "port": 80}]}),
                "two header matches",
            ),
            (
                json!({"matches": [{"headers": [{"name": "x-beta", "value": "1"}]}], "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}], "backendRefs": [{"name": "web-canary", "port": 80}]}),
                "a filter the weighted rule does not have",
            ),
            (
                json!({"matches": [{"headers": [{"name": "x-beta", "value": "1"}], "method": "GET"}], "backendRefs": [{"name": "web-canary", "port": 80}]}),
                "a method condition",
            ),
        ] {
            let o = build(
                &inputs(json!([weighted.clone(), header_rule.clone()])),
                &layout(),
            );
            assert_eq!(accepted(&o)["status"], "True", "{why}: {o:?}");
            assert_eq!(names(&o), ["default/web/0", "default/web/1"], "{why}");
            let w = served(&o, "default/web/0");
            assert!(w.get("canary_match").is_none(), "{why}: {w}");
            assert_eq!(w["canary_weight"], 10.0);
            let h = served(&o, "default/web/1");
            let expected: Value = header_rule["matches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let mut j = json!({"path_prefix": "/", "headers": m["headers"]});
                    if let Some(method) = m["method"].as_str() {
                        j["methods"] = json!([method]);
                    }
                    j
                })
                .collect();
            assert_eq!(h["matches"], expected, "{why}");
            assert!(o.config.validate().is_ok(), "{why}");
        }
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
        assert_eq!(served(&o, "default/web/0")["path_prefix"], "/a/");
        assert_eq!(
            served(&o, "default/web/1")["matches"],
            json!([{"path_exact": "/a"}, {"path_exact": "/b"}])
        );
    }

    #[test]
    fn a_newer_route_prefix_gives_way_to_an_older_exact_path() {
        let mut i = inputs(
            json!([{"matches": [{"path": {"type": "Exact", "value": "/api"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
        );
        i.routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        i.routes.push(json!({"metadata": {"namespace": "default", "name": "newer", "generation": 1, "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": [{"name": "web-canary", "port": 80}]}]}}));
        let o = build(&i, &layout());
        let newer = &o.routes[&("default".to_string(), "newer".to_string())][0]["conditions"][0];
        assert_eq!(newer["status"], "True", "{o:?}");
        let newer = served(&o, "default/newer/0");
        assert_eq!(newer["path_prefix"], "/api/", "{newer}");
        assert!(newer.get("matches").is_none(), "{newer}");
        assert_eq!(
            served(&o, "default/web/0")["matches"],
            json!([{"path_exact": "/api"}])
        );
    }

    #[test]
    fn a_newer_exact_path_takes_the_exact_half_of_an_older_prefix() {
        let mut i = inputs(
            json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
        );
        i.routes[0]["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        i.routes.push(json!({"metadata": {"namespace": "default", "name": "newer", "generation": 1, "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example.com"],
                "rules": [{"matches": [{"path": {"type": "Exact", "value": "/api"}}], "backendRefs": [{"name": "web-canary", "port": 80}]}]}}));
        let o = build(&i, &layout());
        let newer = &o.routes[&("default".to_string(), "newer".to_string())][0]["conditions"][0];
        assert_eq!(newer["status"], "True", "{o:?}");
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(
            served(&o, "default/web/0")["matches"],
            json!([{"path_prefix": "/api/"}])
        );
        assert_eq!(
            served(&o, "default/newer/0")["matches"],
            json!([{"path_exact": "/api"}])
        );
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
            json!([{"path_prefix": "/shop.Cart/", "headers": [{"name": "x-tenant", "value": "a"}]}])
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
            r["canary_match"],
            json!([{"header": "x-canary", "value": "always"}])
        );
        assert!(!names(&o).contains(&"grpc:default/echo/1"));
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
    fn a_grpc_route_and_an_http_route_share_a_hostname_on_one_listener() {
        let o = build(
            &grpc_inputs(
                json!([{"matches": [{"method": {"service": "shop.Cart"}}], "backendRefs": [{"name": "web-canary", "port": 80}]}]),
            ),
            &layout(),
        );
        assert_eq!(accepted(&o)["status"], "True", "{o:?}");
        assert_eq!(grpc_accepted(&o)["status"], "True", "{o:?}");
        let mut served_names = names(&o);
        served_names.sort();
        assert_eq!(served_names, ["default/web/0", "grpc:default/echo/0"]);
        assert_eq!(
            served(&o, "default/web/0")["hosts"],
            json!(["web.example.com"])
        );
        assert_eq!(
            served(&o, "grpc:default/echo/0")["hosts"],
            json!(["web.example.com"])
        );
        let listener = &o.gateways[&("default".to_string(), "gw".to_string())]["listeners"][0];
        assert_eq!(listener["attachedRoutes"], 2);
        assert!(listener["supportedKinds"].to_string().contains("GRPCRoute"));
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

    #[test]
    fn missing_service_is_backend_not_found_and_not_served() {
        let o = build(
            &inputs(json!([{"backendRefs": [{"name": "nope", "port": 80}]}])),
            &layout(),
        );
        let parent = &o.routes[&("default".to_string(), "web".to_string())][0];
        assert_eq!(parent["conditions"][1]["status"], "False");
        assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound");
        assert!(o.config.routes.is_empty());
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
    fn route_names() {
        assert!(is_route_name("default/web/0"));
        assert!(is_route_name("team-a/web.v2/15"));
        assert!(!is_route_name("default/web"));
        assert!(!is_route_name("Default/web/0"));
        assert!(!is_route_name("a/b/c/1"));
        assert!(is_route_name("grpc:default/echo/0"));
        assert!(!is_route_name("grpc:default/echo"));
        assert!(!is_route_name("http:default/echo/0"));
    }
}
