//! Which ports of a taken-over Service are HTTP, and what becomes of the
//! others.
//!
//! A taken-over Service points *every* port at the proxy (its selector is
//! one for all ports), so the proxy serves every port: HTTP ports through
//! a route (split, A/B rules, metrics), every other TCP port through a
//! plain TCP listener (`tcp_listeners` in the proxy's config) that forwards
//! the bytes to the stable pods (the `-primary` Service), with no canary
//! split and no HTTP parsing. Forwarding bytes works for any protocol, HTTP
//! included, while proxying a non-HTTP protocol as HTTP breaks it: when in
//! doubt a port is forwarded as TCP. The rule, first match wins:
//!
//! 1. `sluice.dev/http-ports` (a comma list of Service port names or
//!    numbers, e.g. `http,8080`): exactly the ports it names are HTTP; a
//!    name or number that is no port of the Service is refused with a
//!    Warning Event naming the annotation.
//! 2. The port's `appProtocol`, as meshes read it (case ignored): `http`,
//!    `http2`, `h2c`, `grpc`, `grpc-web`, `kubernetes.io/h2c` and
//!    `kubernetes.io/ws` are HTTP; any other value (`https`, `tls`, `tcp`,
//!    `kubernetes.io/wss`, `mysql`, ...) is not.
//! 3. The port's name, Istio's `<protocol>[-<suffix>]` convention (case
//!    ignored): a name whose protocol part (up to the first `-`) is
//!    `http`, `http2`, `grpc`, `h2c` or `web` is HTTP (`http`, `http-api`,
//!    `http2`, `grpc-web`, `h2c`, `web`); one whose protocol part is
//!    `https`, `tls` or `tcp` is not.
//! 4. Otherwise (unnamed, or named anything else, like `metrics` or
//!    `postgres`): the port Sluice analyses (`sluice.dev/port`, or the
//!    Service's first port) is HTTP, since the release is judged on its
//!    HTTP traffic; every other port is TCP.
//!
//! The port Sluice analyses must come out HTTP; when it does not (its
//! `appProtocol` is `tcp`, say) the take-over is refused with a Warning
//! Event naming the port. UDP and SCTP ports cannot go through the proxy,
//! and a Service has one selector for all its ports, so they cannot stay
//! on the app's pods either: a Service with one is refused with a Warning
//! Event naming the port, and nothing is created or changed (move such a
//! port to a Service of its own).
//!
//! Which HTTP ports speak HTTP/2 (h2c, prior knowledge) to the upstreams,
//! one table ([`is_http2`]), case ignored: `appProtocol` `grpc`, `h2c`,
//! `http2` or `kubernetes.io/h2c`; without an `appProtocol`, a name whose
//! protocol part is `grpc`, `h2c` or `http2` (`grpc`, `grpc-api`, `h2c-1`,
//! `http2`), except `grpc-web` (browsers' gRPC over HTTP/1.1). Everything
//! else (`http`, `web`, `grpc-web`, `kubernetes.io/ws`) is HTTP/1.1.

use serde_json::Value;

use super::annotations::{HTTP_PORTS, PortRef};

/// `appProtocol` values that are HTTP (compared without case).
pub const HTTP_APP_PROTOCOLS: &[&str] = &[
    "http",
    "http2",
    "h2c",
    "grpc",
    "grpc-web",
    "kubernetes.io/h2c",
    "kubernetes.io/ws",
];

/// Name prefixes (up to the first `-`) that are HTTP.
pub const HTTP_NAME_PROTOCOLS: &[&str] = &["http", "http2", "grpc", "h2c", "web"];

/// Name prefixes that are TCP even on the analysed port.
pub const TCP_NAME_PROTOCOLS: &[&str] = &["https", "tls", "tcp"];

/// `appProtocol` values that speak HTTP/2 with prior knowledge.
pub const HTTP2_APP_PROTOCOLS: &[&str] = &["grpc", "h2c", "http2", "kubernetes.io/h2c"];

/// Name protocol parts (up to the first `-`) that speak HTTP/2; a name
/// starting `grpc-web` does not.
pub const HTTP2_NAME_PROTOCOLS: &[&str] = &["grpc", "h2c", "http2"];

/// Whether an HTTP port of a Service (its JSON) speaks HTTP/2 to the
/// upstreams, by the table in the module doc. An `appProtocol` decides
/// alone when given; else the name does.
pub fn is_http2(port: &Value) -> bool {
    if let Some(app_protocol) = port["appProtocol"].as_str() {
        let app_protocol = app_protocol.to_ascii_lowercase();
        return HTTP2_APP_PROTOCOLS.contains(&app_protocol.as_str());
    }
    let name = port["name"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let protocol = name.split('-').next().unwrap_or_default();
    HTTP2_NAME_PROTOCOLS.contains(&protocol) && name != "grpc-web" && !name.starts_with("grpc-web-")
}

/// Parses `sluice.dev/http-ports`: Service port names or numbers, comma
/// separated, at least one, none twice.
pub fn parse_http_ports(value: &str) -> Result<Vec<PortRef>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() {
            return Err("an empty entry".into());
        }
        let port = match item.parse::<i64>() {
            Ok(n) if (1..=65535).contains(&n) => PortRef::Number(n as i32),
            Ok(n) => return Err(format!("{n} is not a port number (1..65535)")),
            Err(_) if is_port_name(item) => PortRef::Name(item.to_string()),
            Err(_) => {
                return Err(format!(
                    "`{item}` is neither a port number nor a port name (up to 15 of a-z, 0-9 and '-')"
                ));
            }
        };
        if out.contains(&port) {
            return Err(format!("`{item}` is named twice"));
        }
        out.push(port);
    }
    Ok(out)
}

/// A Kubernetes port name (IANA service name): 1-15 of a-z, 0-9, '-'.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether one port of a Service (its JSON) is HTTP, by the rule in the
/// module doc; `analysed`: it is the port Sluice judges the release on.
pub fn is_http(port: &Value, analysed: bool, http_ports: Option<&[PortRef]>) -> bool {
    let name = port["name"].as_str().unwrap_or_default();
    let number = port["port"].as_i64().unwrap_or(0);
    if let Some(listed) = http_ports {
        return listed.iter().any(|p| match p {
            PortRef::Name(n) => n == name,
            PortRef::Number(n) => i64::from(*n) == number,
        });
    }
    if let Some(app_protocol) = port["appProtocol"].as_str() {
        let app_protocol = app_protocol.to_ascii_lowercase();
        return HTTP_APP_PROTOCOLS.contains(&app_protocol.as_str());
    }
    let name = name.to_ascii_lowercase();
    let protocol = name.split('-').next().unwrap_or_default();
    if HTTP_NAME_PROTOCOLS.contains(&protocol) {
        return true;
    }
    if TCP_NAME_PROTOCOLS.contains(&protocol) {
        return false;
    }
    analysed
}

/// Every entry of `sluice.dev/http-ports` names a port of the Service.
pub fn check_http_ports(service: &Value, http_ports: &[PortRef]) -> Result<(), String> {
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for wanted in http_ports {
        let found = ports.iter().any(|p| match wanted {
            PortRef::Name(n) => p["name"].as_str() == Some(n.as_str()),
            PortRef::Number(n) => p["port"].as_i64() == Some(i64::from(*n)),
        });
        if !found {
            let allowed: Vec<String> = ports
                .iter()
                .map(|p| format!("{}/{}", p["name"].as_str().unwrap_or("-"), p["port"]))
                .collect();
            let wanted = match wanted {
                PortRef::Name(n) => n.clone(),
                PortRef::Number(n) => n.to_string(),
            };
            return Err(format!(
                "annotation {HTTP_PORTS}: `{wanted}` matches no port of the Service (ports: {})",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn http(port: Value, analysed: bool) -> bool {
        is_http(&port, analysed, None)
    }

    #[test]
    fn app_protocol_decides_first() {
        for p in [
            "http",
            "HTTP",
            "http2",
            "h2c",
            "grpc",
            "grpc-web",
            "kubernetes.io/h2c",
            "kubernetes.io/ws",
        ] {
            assert!(
                http(json!({"name": "db", "port": 5432, "appProtocol": p}), false),
                "{p}"
            );
        }
        for p in ["https", "tls", "tcp", "kubernetes.io/wss", "mysql", "redis"] {
            // Even on an HTTP-looking name, and on the analysed port.
            assert!(
                !http(json!({"name": "http", "port": 80, "appProtocol": p}), true),
                "{p}"
            );
        }
    }

    #[test]
    fn names_follow_the_mesh_convention() {
        for name in [
            "http",
            "http-api",
            "HTTP-Admin",
            "http2",
            "http2-x",
            "grpc",
            "grpc-web",
            "h2c",
            "h2c-1",
            "web",
            "web-ui",
        ] {
            assert!(http(json!({"name": name, "port": 81}), false), "{name}");
        }
        for name in ["https", "https-web", "tls", "tcp-raw", "tcp"] {
            assert!(!http(json!({"name": name, "port": 81}), false), "{name}");
            assert!(
                !http(json!({"name": name, "port": 81}), true),
                "{name} on the analysed port"
            );
        }
        // Not a protocol prefix: "httpd", "webhook", "grpcx".
        for name in ["httpd", "webhook", "grpcx", "metrics", "postgres", "redis"] {
            assert!(!http(json!({"name": name, "port": 81}), false), "{name}");
        }
    }

    #[test]
    fn one_table_says_which_ports_speak_http2() {
        for p in [
            "grpc",
            "GRPC",
            "h2c",
            "http2",
            "kubernetes.io/h2c",
            "Kubernetes.io/H2C",
        ] {
            assert!(is_http2(&json!({"name": "web", "appProtocol": p})), "{p}");
        }
        for p in ["grpc-web", "http", "kubernetes.io/ws", "HTTP", "tcp"] {
            // The appProtocol decides, even against a gRPC-looking name.
            assert!(!is_http2(&json!({"name": "grpc", "appProtocol": p})), "{p}");
        }
        for name in [
            "grpc", "GRPC", "grpc-api", "h2c", "h2c-1", "http2", "http2-x",
        ] {
            assert!(is_http2(&json!({"name": name})), "{name}");
        }
        for name in [
            "grpc-web",
            "grpc-web-ui",
            "http",
            "web",
            "http-api",
            "grpcx",
            "h2",
            "",
        ] {
            assert!(!is_http2(&json!({"name": name})), "{name}");
        }
        // Every HTTP/2 port is an HTTP port by the same tables.
        for p in HTTP2_APP_PROTOCOLS {
            assert!(HTTP_APP_PROTOCOLS.contains(p), "{p}");
        }
        for p in HTTP2_NAME_PROTOCOLS {
            assert!(HTTP_NAME_PROTOCOLS.contains(p), "{p}");
        }
    }

    #[test]
    fn an_unknown_port_is_http_only_when_it_is_the_analysed_one() {
        assert!(http(json!({"port": 80}), true));
        assert!(!http(json!({"port": 80}), false));
        assert!(http(json!({"name": "metrics", "port": 9090}), true));
        assert!(!http(json!({"name": "metrics", "port": 9090}), false));
    }

    #[test]
    fn the_annotation_overrides_every_guess() {
        let listed = parse_http_ports("metrics, 8443").unwrap();
        let is = |port: Value| is_http(&port, false, Some(&listed));
        assert!(is(json!({"name": "metrics", "port": 9090})));
        assert!(is(
            json!({"name": "tls", "port": 8443, "appProtocol": "https"})
        ));
        assert!(!is(
            json!({"name": "http", "port": 80, "appProtocol": "http"})
        ));
        assert!(!is_http(
            &json!({"name": "http", "port": 80}),
            true,
            Some(&listed)
        ));
    }

    #[test]
    fn bad_annotation_values_say_what_is_wrong() {
        assert_eq!(
            parse_http_ports("http,8080").unwrap(),
            [PortRef::Name("http".into()), PortRef::Number(8080)]
        );
        for (value, expected) in [
            ("", "an empty entry"),
            ("http,", "an empty entry"),
            ("0", "not a port number"),
            ("70000", "not a port number"),
            ("Http", "neither a port number nor a port name"),
            ("a-very-long-port-name", "neither"),
            ("http,http", "named twice"),
        ] {
            let e = parse_http_ports(value).unwrap_err();
            assert!(e.contains(expected), "{value}: {e}");
        }
        let service = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"port": 5432}]}});
        assert!(check_http_ports(&service, &parse_http_ports("http,5432").unwrap()).is_ok());
        let e = check_http_ports(&service, &parse_http_ports("grpc").unwrap()).unwrap_err();
        assert!(
            e.contains("sluice.dev/http-ports: `grpc` matches no port of the Service (ports: http/80, -/5432)"),
            "{e}"
        );
    }
}
