//! From Gateway API objects (as JSON) to the proxy's [`Config`] and the
//! statuses to write. Pure: no I/O, so every rule is unit-tested here.
//!
//! How an `HTTPRoute` maps onto Sluice routes (the decisions the Gateway
//! API leaves to an implementation are in `docs/gateway-api.md`):
//!
//! - A rule whose matches carry no header match is a *weighted rule*: one
//!   Sluice route per listener it attaches to, named `NS/NAME/RULE_INDEX`
//!   (the `route` label of every metric), with `hosts` the intersection of
//!   the route's and the listener's hostnames and `path_prefix` its path.
//!   One backendRef is the stable; with two, the first is the stable and
//!   the second the canary, at `weight₂ / (weight₁ + weight₂)`, split
//!   exactly. The share must be a whole number of basis points (0.01 %).
//! - A rule whose every match has exactly one `Exact` header match and
//!   that sends to one backendRef is an *A/B rule*: it joins the weighted
//!   rule of the same route with the same path, as `canary_match`, and its
//!   backend must be that rule's canary (or becomes its canary, at weight 0,
//!   when the weighted rule has one backend).
//! - `RequestMirror` (on a weighted rule with one backendRef) is the
//!   route's `mirror` to the mirrored Service, at the filter's percent.
//! - `timeouts.backendRequest` (else `timeouts.request`) is the route's
//!   `timeouts.request`.
//! - Everything else the proxy cannot serve as written (other filters,
//!   `Exact` and `RegularExpression` paths, method and query-parameter
//!   matches, several header matches in one match, more than two
//!   backendRefs, ...) refuses the whole HTTPRoute for that parent:
//!   `Accepted: False`, reason `UnsupportedValue`, a message naming the
//!   field; none of its rules is served.

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

/// Whether `name` is a route name this controller writes, `NS/NAME/INDEX`.
pub fn is_route_name(name: &str) -> bool {
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

/// One weighted rule with its A/B rules, mirror and timeout.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    rule: usize,
    path: String,
    stable: Backend,
    canary: Option<Backend>,
    canary_bp: u32,
    matches: Vec<(String, String)>,
    mirror: Option<(Backend, u64)>,
    request_timeout: Option<String>,
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

/// The path of a match: `PathPrefix` only.
fn path_of(m: &Value, at: &str) -> Result<String, Refusal> {
    let kind = m
        .pointer("/path/type")
        .and_then(Value::as_str)
        .unwrap_or("PathPrefix");
    let value = m
        .pointer("/path/value")
        .and_then(Value::as_str)
        .unwrap_or("/");
    if kind != "PathPrefix" {
        return Err(unsupported(format!(
            "{at}.path.type: {kind} is not supported by sluice-proxy (PathPrefix only)"
        )));
    }
    Ok(value.to_string())
}

/// Reads one route's rules into plans, or the first refusal.
fn plan_route(route: &Value) -> Result<Vec<Plan>, Refusal> {
    let ns = str_at(route, "/metadata/namespace");
    let empty = Vec::new();
    let rules = route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut plans: Vec<Plan> = Vec::new();
    // (rule index, path, header, value, backend)
    let mut ab: Vec<(usize, String, String, String, Backend)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let default_matches = vec![json!({})];
        let matches = rule["matches"]
            .as_array()
            .filter(|m| !m.is_empty())
            .unwrap_or(&default_matches);
        let mut paths = BTreeSet::new();
        let mut headers = Vec::new();
        for (j, m) in matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if m["method"].is_string() {
                return Err(unsupported(format!(
                    "{at}.method: method matches are not supported by sluice-proxy"
                )));
            }
            if m["queryParams"].as_array().is_some_and(|q| !q.is_empty()) {
                return Err(unsupported(format!(
                    "{at}.queryParams: query parameter matches are not supported by sluice-proxy"
                )));
            }
            paths.insert(path_of(m, &at)?);
            let hs = m["headers"].as_array().cloned().unwrap_or_default();
            for (k, h) in hs.iter().enumerate() {
                let t = match str_at(h, "/type") {
                    "" => "Exact",
                    t => t,
                };
                if t != "Exact" {
                    return Err(unsupported(format!(
                        "{at}.headers[{k}].type: {t} is not supported by sluice-proxy (Exact only)"
                    )));
                }
            }
            headers.push(hs);
        }
        let mut mirror = None;
        for (j, f) in rule["filters"].as_array().into_iter().flatten().enumerate() {
            let t = str_at(f, "/type");
            if t == "RequestMirror" && mirror.is_none() {
                let backend = backend_of(
                    &f["requestMirror"]["backendRef"],
                    ns,
                    &format!("{at}.filters[{j}].requestMirror.backendRef"),
                )?;
                let percent = f["requestMirror"]["percent"].as_u64().unwrap_or(100);
                mirror = Some((backend, percent));
            } else {
                return Err(unsupported(format!(
                    "{at}.filters[{j}].type: {t} is not supported by sluice-proxy"
                )));
            }
        }
        let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
        let mut backends = Vec::new();
        for (j, r) in refs.iter().enumerate() {
            if r["filters"].as_array().is_some_and(|f| !f.is_empty()) {
                return Err(unsupported(format!(
                    "{at}.backendRefs[{j}].filters: per-backend filters are not supported by sluice-proxy"
                )));
            }
            backends.push(backend_of(r, ns, &format!("{at}.backendRefs[{j}]"))?);
        }
        if backends.is_empty() {
            return Err(unsupported(format!(
                "{at}.backendRefs: a rule without backendRefs is not supported by sluice-proxy"
            )));
        }
        let timeout = rule
            .pointer("/timeouts/backendRequest")
            .or_else(|| rule.pointer("/timeouts/request"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let with_headers = headers.iter().filter(|h| !h.is_empty()).count();
        if with_headers == 0 {
            if paths.len() != 1 {
                return Err(unsupported(format!(
                    "{at}.matches: a rule with several paths is not supported by sluice-proxy (write one rule per path)"
                )));
            }
            let path = paths.into_iter().next().unwrap_or_default();
            if plans.iter().any(|p| p.path == path) {
                return Err(unsupported(format!(
                    "{at}.matches: an earlier rule already matches every request under `{path}`"
                )));
            }
            if backends.len() > 2 {
                return Err(unsupported(format!(
                    "{at}.backendRefs: sluice-proxy splits between at most two backends, not {}",
                    backends.len()
                )));
            }
            let stable = backends[0].clone();
            let canary = backends.get(1).cloned();
            let canary_bp = match &canary {
                None => 0,
                Some(c) => {
                    let total = stable.weight + c.weight;
                    if total == 0 {
                        return Err(unsupported(format!("{at}.backendRefs: every weight is 0")));
                    }
                    if (c.weight * 10_000) % total != 0 {
                        return Err(unsupported(format!(
                            "{at}.backendRefs: weights {}:{} give the second backend a share that is not a whole number of 0.01 %, which sluice-proxy cannot split exactly",
                            stable.weight, c.weight
                        )));
                    }
                    (c.weight * 10_000 / total) as u32
                }
            };
            if stable.weight == 0 && canary.is_none() {
                return Err(unsupported(format!(
                    "{at}.backendRefs[0].weight: 0 sends no request anywhere"
                )));
            }
            if mirror.is_some() && canary.is_some() {
                return Err(unsupported(format!(
                    "{at}.filters: RequestMirror is supported by sluice-proxy on a rule with one backendRef"
                )));
            }
            plans.push(Plan {
                rule: i,
                path,
                stable,
                canary,
                canary_bp,
                matches: Vec::new(),
                mirror,
                request_timeout: timeout,
            });
        } else {
            if with_headers != headers.len() || headers.iter().any(|h| h.len() != 1) {
                return Err(unsupported(format!(
                    "{at}.matches: sluice-proxy's A/B rules need exactly one header match in every match of the rule"
                )));
            }
            if backends.len() != 1 || mirror.is_some() || timeout.is_some() {
                return Err(unsupported(format!(
                    "{at}: a rule with header matches is an A/B rule in sluice-proxy: one backendRef, no filters, no timeouts"
                )));
            }
            for (m, hs) in matches.iter().zip(&headers) {
                let path = path_of(m, &at)?;
                let h = &hs[0];
                ab.push((
                    i,
                    path,
                    str_at(h, "/name").to_ascii_lowercase(),
                    str_at(h, "/value").to_string(),
                    backends[0].clone(),
                ));
            }
        }
    }
    for (i, path, header, value, backend) in ab {
        let at = format!("spec.rules[{i}]");
        let Some(plan) = plans.iter_mut().find(|p| p.path == path) else {
            return Err(unsupported(format!(
                "{at}: an A/B rule needs a rule without header matches for the same path `{path}` in the same HTTPRoute (sluice-proxy sends the other requests there)"
            )));
        };
        let same = |a: &Backend, b: &Backend| a.name == b.name && a.port == b.port;
        match &plan.canary {
            Some(c) if same(c, &backend) => {}
            Some(c) => {
                return Err(unsupported(format!(
                    "{at}.backendRefs[0]: an A/B rule must send to the canary of rule {} ({}:{}), not {}:{}",
                    plan.rule, c.name, c.port, backend.name, backend.port
                )));
            }
            None if plan.mirror.is_some() => {
                return Err(unsupported(format!(
                    "{at}: rule {} mirrors; sluice-proxy does not combine a mirror with A/B rules on one path",
                    plan.rule
                )));
            }
            None => plan.canary = Some(backend),
        }
        plan.matches.push((header, value));
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

fn route_config(
    name: &str,
    hosts: &[String],
    listener: Option<&str>,
    plan: &Plan,
    urls: &BTreeMap<(String, u16), String>,
) -> RouteConfig {
    let url = |b: &Backend| urls[&(b.name.clone(), b.port)].clone();
    let mut r = json!({
        "name": format!("{name}/{}", plan.rule),
        "hosts": hosts,
        "path_prefix": plan.path,
        "stable": url(&plan.stable),
        "canary_weight": plan.canary_bp as f64 / 100.0,
        "canary_match": plan.matches.iter().map(|(h, v)| json!({"header": h, "value": v})).collect::<Vec<_>>(),
    });
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
    if let Some(l) = listener {
        r["listener"] = json!(l);
    }
    serde_json::from_value(r).expect("a route built from known fields")
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
    let mut routes: Vec<&Value> = inputs.routes.iter().collect();
    routes.sort_by_key(|r| (str_at(r, "/metadata/creationTimestamp").to_string(), key(r)));
    for route in routes {
        let (ns, name) = key(route);
        let gen_ = generation(route);
        let planned = plan_route(route);
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
            let kind = parent["kind"].as_str().unwrap_or("Gateway");
            let gw_ns = match str_at(parent, "/namespace") {
                "" => ns.as_str(),
                n => n,
            };
            let gw_key = (gw_ns.to_string(), str_at(parent, "/name").to_string());
            if group != GROUP || kind != "Gateway" {
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
            let mut candidate = config.clone();
            for (l, hosts) in &targets {
                let listener = (Some(l.port) != first_port).then(|| listener_name(l.port));
                for plan in plans {
                    candidate.routes.push(route_config(
                        &format!("{ns}/{name}"),
                        hosts,
                        listener.as_deref(),
                        plan,
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
                    condition("Accepted", false, "UnsupportedValue", &format!("sluice-proxy refused the routes made of this HTTPRoute (an older route may already serve the same hostnames and path): {errors}"), gen_),
                    resolved_cond,
                )),
            }
        }
        if !parents.is_empty() {
            outcome.routes.insert((ns, name), parents);
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
                    "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}],
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
            services: ["web", "web-canary"]
                .iter()
                .enumerate()
                .map(|(i, n)| json!({"metadata": {"namespace": "default", "name": n}, "spec": {"clusterIP": format!("10.0.0.{}", i + 1), "ports": [{"port": 80}]}}))
                .collect(),
        }
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
    fn unsupported_values_refuse_the_whole_route() {
        for (rules, field) in [
            (
                json!([{"backendRefs": [{"name": "web", "port": 80}]}, {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "filters": [{"type": "URLRewrite", "urlRewrite": {}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[1].filters[0].type",
            ),
            (
                json!([{"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].path.type",
            ),
            (
                json!([{"matches": [{"method": "GET"}], "backendRefs": [{"name": "web", "port": 80}]}]),
                "spec.rules[0].matches[0].method",
            ),
            (
                json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 1}, {"name": "web-canary", "port": 80, "weight": 2}]}]),
                "spec.rules[0].backendRefs",
            ),
        ] {
            let o = build(&inputs(rules), &layout());
            let c = accepted(&o);
            assert_eq!(c["status"], "False");
            assert_eq!(c["reason"], "UnsupportedValue");
            assert!(c["message"].as_str().unwrap().contains(field), "{c}");
            assert!(o.config.routes.is_empty(), "nothing served half");
        }
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
    }
}
