//! CustomResourceDefinitions for the subset of the Gateway API
//! (`gateway.networking.k8s.io`) that Sluice uses: `GatewayClass`,
//! `Gateway`, `HTTPRoute` and `GRPCRoute`, generated here rather than copied from
//! upstream. They follow the shape of the published standard-channel v1
//! schema for the fields they carry (names, scopes, short names and
//! categories; `x-kubernetes-list-type`s, e.g. `backendRefs` is `atomic`
//! and `listeners` a map keyed by `name`; `enum`s, bounds, patterns and
//! defaults, e.g. a backendRef's `weight` is 0..1000000 defaulting to 1;
//! the `status` subresource and printer columns; `HTTPRoute` served as
//! `v1` (storage) and `v1beta1`). Fields Sluice does not use are left out,
//! and so are most of the published CEL rules; a few are kept where
//! tests lean on them (a path match's value must start with `/`; a
//! GRPCRoute method match names a service or a method, each of the
//! characters a protobuf name may have).
//!
//! `GRPCRoute` is served as `v1` only (the standard channel's storage
//! version): hostnames, parentRefs and up to 16 rules of method matches
//! (`Exact` or `RegularExpression`, `service` and/or `method`), header
//! matches, the four gRPC filters (`RequestHeaderModifier`,
//! `ResponseHeaderModifier`, `RequestMirror`, `ExtensionRef`) and
//! weighted backendRefs, with the same `status.parents` as HTTPRoute.
//!
//! [`all`] gives the four CRDs as JSON; [`yaml`] as one YAML stream for
//! `kubectl apply -f`.

use serde_json::{Value, json};

pub const GROUP: &str = "gateway.networking.k8s.io";

const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const HOSTNAME: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const GROUP_PATTERN: &str = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const KIND_PATTERN: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
const NAMESPACE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const HEADER_NAME: &str = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$";
const DURATION: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

fn string(min: Option<u64>, max: u64, pattern: Option<&str>) -> Value {
    let mut s = json!({"type": "string", "maxLength": max});
    if let Some(m) = min {
        s["minLength"] = json!(m);
    }
    if let Some(p) = pattern {
        s["pattern"] = json!(p);
    }
    s
}

fn object(properties: Value, required: &[&str]) -> Value {
    let mut o = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

fn list(items: Value, max: u64, list_type: &str) -> Value {
    json!({"type": "array", "maxItems": max, "items": items, "x-kubernetes-list-type": list_type})
}

fn map_list(items: Value, max: u64, key: &str) -> Value {
    json!({"type": "array", "maxItems": max, "items": items,
           "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]})
}

fn port() -> Value {
    json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535})
}

fn with_default(mut s: Value, default: Value) -> Value {
    s["default"] = default;
    s
}

fn enumerated(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

/// `metav1.Condition`, as every Gateway API status carries it.
fn conditions() -> Value {
    map_list(
        object(
            json!({
                "type": string(Some(1), 316, Some(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")),
                "status": enumerated(&["True", "False", "Unknown"]),
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": string(Some(1), 1024, Some(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")),
                "message": string(None, 32768, None),
            }),
            &["lastTransitionTime", "message", "reason", "status", "type"],
        ),
        8,
        "type",
    )
}

/// A `ParentReference` (an HTTPRoute's Gateway).
fn parent_ref() -> Value {
    object(
        json!({
            "group": with_default(string(None, 253, Some(GROUP_PATTERN)), json!(GROUP)),
            "kind": with_default(string(Some(1), 63, Some(KIND_PATTERN)), json!("Gateway")),
            "namespace": string(Some(1), 63, Some(NAMESPACE_PATTERN)),
            "name": string(Some(1), 253, None),
            "sectionName": string(Some(1), 253, Some(DNS_SUBDOMAIN)),
            "port": port(),
        }),
        &["name"],
    )
}

fn backend_object_ref() -> Value {
    object(
        json!({
            "group": with_default(string(None, 253, Some(GROUP_PATTERN)), json!("")),
            "kind": with_default(string(Some(1), 63, Some(KIND_PATTERN)), json!("Service")),
            "name": string(Some(1), 253, None),
            "namespace": string(Some(1), 63, Some(NAMESPACE_PATTERN)),
            "port": port(),
        }),
        &["name"],
    )
}

fn header_modifier() -> Value {
    let header = object(
        json!({"name": string(Some(1), 256, Some(HEADER_NAME)), "value": string(Some(1), 4096, None)}),
        &["name", "value"],
    );
    object(
        json!({
            "set": map_list(header.clone(), 16, "name"),
            "add": map_list(header, 16, "name"),
            "remove": list(json!({"type": "string"}), 16, "set"),
        }),
        &[],
    )
}

fn path_modifier() -> Value {
    object(
        json!({
            "type": enumerated(&["ReplaceFullPath", "ReplacePrefixMatch"]),
            "replaceFullPath": string(None, 1024, None),
            "replacePrefixMatch": string(None, 1024, None),
        }),
        &["type"],
    )
}

fn request_mirror() -> Value {
    object(
        json!({
            "backendRef": backend_object_ref(),
            "percent": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 100},
        }),
        &["backendRef"],
    )
}

fn extension_ref() -> Value {
    object(
        json!({
            "group": string(None, 253, Some(GROUP_PATTERN)),
            "kind": string(Some(1), 63, Some(KIND_PATTERN)),
            "name": string(Some(1), 253, None),
        }),
        &["group", "kind", "name"],
    )
}

fn filter() -> Value {
    object(
        json!({
            "type": enumerated(&["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "ExtensionRef"]),
            "requestHeaderModifier": header_modifier(),
            "responseHeaderModifier": header_modifier(),
            "requestMirror": request_mirror(),
            "requestRedirect": object(json!({
                "scheme": enumerated(&["http", "https"]),
                "hostname": string(Some(1), 253, Some(DNS_SUBDOMAIN)),
                "path": path_modifier(),
                "port": port(),
                "statusCode": {"type": "integer", "enum": [301, 302, 303, 307, 308], "default": 302},
            }), &[]),
            "urlRewrite": object(json!({
                "hostname": string(Some(1), 253, Some(DNS_SUBDOMAIN)),
                "path": path_modifier(),
            }), &[]),
            "extensionRef": extension_ref(),
        }),
        &["type"],
    )
}

/// A GRPCRoute's filter: the HTTPRoute's minus redirects and rewrites.
fn grpc_filter() -> Value {
    object(
        json!({
            "type": enumerated(&["ResponseHeaderModifier", "RequestHeaderModifier", "RequestMirror", "ExtensionRef"]),
            "requestHeaderModifier": header_modifier(),
            "responseHeaderModifier": header_modifier(),
            "requestMirror": request_mirror(),
            "extensionRef": extension_ref(),
        }),
        &["type"],
    )
}

/// `status.parents`, shared by HTTPRoute and GRPCRoute.
fn route_status() -> Value {
    object(
        json!({"parents": list(object(json!({
            "parentRef": parent_ref(),
            "controllerName": string(Some(1), 253, None),
            "conditions": conditions(),
        }), &["conditions", "controllerName", "parentRef"]), 32, "atomic")}),
        &["parents"],
    )
}

fn weighted_backend_ref(filter: Value) -> Value {
    let mut backend_ref = backend_object_ref();
    backend_ref["properties"]["weight"] = json!({
        "type": "integer", "format": "int32", "minimum": 0, "maximum": 1000000, "default": 1,
    });
    backend_ref["properties"]["filters"] = list(filter, 16, "atomic");
    backend_ref
}

fn grpc_route_schema() -> Value {
    let mut method = object(
        json!({
            "type": with_default(enumerated(&["Exact", "RegularExpression"]), json!("Exact")),
            "service": string(None, 1024, None),
            "method": string(None, 1024, None),
        }),
        &[],
    );
    method["x-kubernetes-validations"] = json!([
        {
            "message": "One or both of 'service' or 'method' must be specified",
            "rule": "has(self.type) ? has(self.service) || has(self.method) : true",
        },
        {
            "message": "service must only contain valid characters (matching ^(?i)[.]?[a-z_][a-z_0-9]*([.][a-z_][a-z_0-9]*)*$)",
            "rule": "(!has(self.type) || self.type == 'Exact') && has(self.service) ? self.service.matches('^(?i)[.]?[a-z_][a-z_0-9]*([.][a-z_][a-z_0-9]*)*$') : true",
        },
        {
            "message": "method must only contain valid characters (matching ^[A-Za-z_][A-Za-z_0-9]*$)",
            "rule": "(!has(self.type) || self.type == 'Exact') && has(self.method) ? self.method.matches('^[A-Za-z_][A-Za-z_0-9]*$') : true",
        },
    ]);
    let header = object(
        json!({
            "type": with_default(enumerated(&["Exact", "RegularExpression"]), json!("Exact")),
            "name": string(Some(1), 256, Some(HEADER_NAME)),
            "value": string(Some(1), 4096, None),
        }),
        &["name", "value"],
    );
    let matches = json!({"type": "array", "maxItems": 64, "x-kubernetes-list-type": "atomic", "items": object(json!({
        "method": method,
        "headers": map_list(header, 16, "name"),
    }), &[])});
    let rule = object(
        json!({
            "name": string(Some(1), 253, Some(DNS_SUBDOMAIN)),
            "matches": matches,
            "filters": list(grpc_filter(), 16, "atomic"),
            "backendRefs": list(weighted_backend_ref(grpc_filter()), 16, "atomic"),
        }),
        &[],
    );
    let spec = object(
        json!({
            "parentRefs": list(parent_ref(), 32, "atomic"),
            "hostnames": list(string(Some(1), 253, Some(HOSTNAME)), 16, "atomic"),
            "rules": list(rule, 16, "atomic"),
        }),
        &[],
    );
    object(json!({"spec": spec, "status": route_status()}), &["spec"])
}

fn http_route_schema() -> Value {
    let name_value = |max: u64| {
        object(
            json!({
                "type": with_default(enumerated(&["Exact", "RegularExpression"]), json!("Exact")),
                "name": string(Some(1), 256, Some(HEADER_NAME)),
                "value": string(Some(1), max, None),
            }),
            &["name", "value"],
        )
    };
    let mut path = object(
        json!({
            "type": with_default(enumerated(&["Exact", "PathPrefix", "RegularExpression"]), json!("PathPrefix")),
            "value": with_default(json!({"type": "string", "maxLength": 1024}), json!("/")),
        }),
        &[],
    );
    path["default"] = json!({"type": "PathPrefix", "value": "/"});
    path["x-kubernetes-validations"] = json!([{
        "message": "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']",
        "rule": "(self.type in ['Exact','PathPrefix']) ? self.value.startsWith('/') : true",
    }]);
    let matches = with_default(
        json!({"type": "array", "maxItems": 64, "x-kubernetes-list-type": "atomic", "items": object(json!({
            "path": path,
            "headers": map_list(name_value(4096), 16, "name"),
            "queryParams": map_list(name_value(1024), 16, "name"),
            "method": enumerated(&["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]),
        }), &[])}),
        json!([{"path": {"type": "PathPrefix", "value": "/"}}]),
    );
    let rule = object(
        json!({
            "name": string(Some(1), 253, Some(DNS_SUBDOMAIN)),
            "matches": matches,
            "filters": list(filter(), 16, "atomic"),
            "backendRefs": list(weighted_backend_ref(filter()), 16, "atomic"),
            "timeouts": object(json!({
                "request": {"type": "string", "pattern": DURATION},
                "backendRequest": {"type": "string", "pattern": DURATION},
            }), &[]),
        }),
        &[],
    );
    let mut rules = list(rule, 16, "atomic");
    rules["minItems"] = json!(1);
    rules["default"] = json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]);
    let spec = object(
        json!({
            "parentRefs": list(parent_ref(), 32, "atomic"),
            "hostnames": list(string(Some(1), 253, Some(HOSTNAME)), 16, "atomic"),
            "rules": rules,
        }),
        &[],
    );
    object(json!({"spec": spec, "status": route_status()}), &["spec"])
}

fn gateway_schema() -> Value {
    let listener = object(
        json!({
            "name": string(Some(1), 253, Some(DNS_SUBDOMAIN)),
            "hostname": string(Some(1), 253, Some(HOSTNAME)),
            "port": port(),
            "protocol": string(Some(1), 255, Some(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$")),
            "allowedRoutes": with_default(object(json!({
                "namespaces": with_default(object(json!({
                    "from": with_default(enumerated(&["All", "Selector", "Same"]), json!("Same")),
                }), &[]), json!({"from": "Same"})),
            }), &[]), json!({"namespaces": {"from": "Same"}})),
        }),
        &["name", "port", "protocol"],
    );
    let mut listeners = map_list(listener, 64, "name");
    listeners["minItems"] = json!(1);
    let spec = object(
        json!({
            "gatewayClassName": string(Some(1), 253, None),
            "listeners": listeners,
        }),
        &["gatewayClassName", "listeners"],
    );
    let status = object(
        json!({
            "addresses": list(object(json!({
                "type": with_default(string(Some(1), 253, None), json!("IPAddress")),
                "value": string(Some(1), 253, None),
            }), &["value"]), 16, "atomic"),
            "conditions": conditions(),
            "listeners": map_list(object(json!({
                "name": string(Some(1), 253, Some(DNS_SUBDOMAIN)),
                "attachedRoutes": {"type": "integer", "format": "int32"},
                "supportedKinds": list(object(json!({
                    "group": string(None, 253, Some(GROUP_PATTERN)),
                    "kind": string(Some(1), 63, Some(KIND_PATTERN)),
                }), &["kind"]), 8, "atomic"),
                "conditions": conditions(),
            }), &["attachedRoutes", "conditions", "name", "supportedKinds"]), 64, "name"),
        }),
        &[],
    );
    object(json!({"spec": spec, "status": status}), &["spec"])
}

fn gateway_class_schema() -> Value {
    let mut controller = string(
        Some(1),
        253,
        Some(
            r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$",
        ),
    );
    controller["x-kubernetes-validations"] =
        json!([{"message": "Value is immutable", "rule": "self == oldSelf"}]);
    let spec = object(
        json!({
            "controllerName": controller,
            "description": string(None, 64, None),
        }),
        &["controllerName"],
    );
    let status = object(json!({"conditions": conditions()}), &[]);
    object(json!({"spec": spec, "status": status}), &["spec"])
}

fn crd(
    plural: &str,
    kind: &str,
    short: &[&str],
    scope: &str,
    versions: &[&str],
    schema: Value,
    columns: Value,
) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{GROUP}"),
            "annotations": {"sluice.dev/generated-by": "sluice-tests gateway_crds (a subset of the Gateway API's standard channel)"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "plural": plural, "singular": kind.to_lowercase(), "kind": kind,
                "listKind": format!("{kind}List"), "shortNames": short, "categories": ["gateway-api"],
            },
            "versions": versions.iter().enumerate().map(|(i, v)| json!({
                "name": v, "served": true, "storage": i == 0,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            })).collect::<Vec<_>>(),
        },
    })
}

pub fn gateway_class() -> Value {
    crd(
        "gatewayclasses",
        "GatewayClass",
        &["gc"],
        "Cluster",
        &["v1"],
        gateway_class_schema(),
        json!([
            {"name": "Controller", "type": "string", "jsonPath": ".spec.controllerName"},
            {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Description", "type": "string", "jsonPath": ".spec.description", "priority": 1},
        ]),
    )
}

pub fn gateway() -> Value {
    crd(
        "gateways",
        "Gateway",
        &["gtw"],
        "Namespaced",
        &["v1"],
        gateway_schema(),
        json!([
            {"name": "Class", "type": "string", "jsonPath": ".spec.gatewayClassName"},
            {"name": "Address", "type": "string", "jsonPath": ".status.addresses[*].value"},
            {"name": "Programmed", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]),
    )
}

pub fn http_route() -> Value {
    crd(
        "httproutes",
        "HTTPRoute",
        &[],
        "Namespaced",
        &["v1", "v1beta1"],
        http_route_schema(),
        json!([
            {"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]),
    )
}

pub fn grpc_route() -> Value {
    crd(
        "grpcroutes",
        "GRPCRoute",
        &[],
        "Namespaced",
        &["v1"],
        grpc_route_schema(),
        json!([
            {"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]),
    )
}

/// GatewayClass, Gateway, HTTPRoute and GRPCRoute CRDs.
pub fn all() -> Vec<Value> {
    vec![gateway_class(), gateway(), http_route(), grpc_route()]
}

/// [`all`] as one YAML stream.
pub fn yaml() -> String {
    all()
        .iter()
        .map(|c| serde_yaml_ng::to_string(c).expect("CRDs serialise"))
        .collect::<Vec<_>>()
        .join("---\n")
}
