//! Route matches (exact and prefix paths, methods, header and query
//! conditions) and the routes' request and response header modifiers,
//! end to end: a real proxy on 127.0.0.1, real HTTP/1.1 and HTTP/2
//! clients, and backends that echo the request they received.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::Full;
use serde_json::{Value, json};
use sluice_tests::*;
use tokio::io::AsyncWriteExt;

/// A backend named `name` answering every request with a JSON echo of
/// what it received (method, path and query, version, every field in
/// order) and a few fields of its own for the response modifiers:
/// `x-r-set: old`, `x-r-add: one`, `x-r-drop: gone`, `x-r-keep: kept`.
async fn echo_backend(name: &'static str) -> SocketAddr {
    serve_http(move |req: Request<hyper::body::Incoming>| async move {
        let fields: Vec<Value> = req
            .headers()
            .iter()
            .map(|(n, v)| json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect();
        let echo = json!({
            "backend": name,
            "method": req.method().as_str(),
            "target": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "version": format!("{:?}", req.version()),
            "fields": fields,
        });
        Response::builder()
            .header("x-backend", name)
            .header("x-r-set", "old")
            .header("x-r-add", "one")
            .header("x-r-drop", "gone")
            .header("x-r-keep", "kept")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(echo.to_string())))
            .unwrap()
    })
    .await
}

/// What a backend echoed.
struct Echo(Value);

impl Echo {
    fn backend(&self) -> &str {
        self.0["backend"].as_str().unwrap()
    }

    /// Every value of the fields named `name`, in order.
    fn values(&self, name: &str) -> Vec<String> {
        self.0["fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f[0] == name)
            .map(|f| f[1].as_str().unwrap().to_string())
            .collect()
    }
}

/// Sends `req` through `client`; the status, the answer's fields and, for
/// a backend's answer, its echo.
async fn exchange(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Option<Echo>) {
    let (status, headers, body) = send(client, req).await.expect("an answer");
    let echo = serde_json::from_slice(&body).ok().map(Echo);
    (status, headers, echo)
}

/// The backend a request reached (None: the proxy answered 404 itself).
async fn reached(
    proxy: &ProxyHandle,
    method: &str,
    target: &str,
    fields: &[(&str, &str)],
) -> Option<String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{target}", proxy.addr));
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    let (status, _, echo) = exchange(&h1_client(), req.body(Full::default()).unwrap()).await;
    match status {
        StatusCode::NOT_FOUND => None,
        StatusCode::OK => Some(echo.expect("an echo").backend().to_string()),
        other => panic!("{method} {target}: unexpected {other}"),
    }
}

/// Backends named after the routes, one per route, in config order.
async fn backends(names: &[&'static str]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for name in names {
        out.push(echo_backend(name).await);
    }
    out
}

#[tokio::test]
async fn an_exact_path_beats_any_prefix_and_a_longer_prefix_a_shorter_one() {
    let b = backends(&["api", "login", "v1", "exact-root"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: api, matches: [{{path_prefix: /api}}], stable: 'http://{}' }}\n  - {{ name: login, matches: [{{path_exact: /api/login}}], stable: 'http://{}' }}\n  - {{ name: v1, path_prefix: /api/v1, stable: 'http://{}' }}\n  - {{ name: exact-root, matches: [{{path_exact: /}}], stable: 'http://{}' }}\n",
        b[0], b[1], b[2], b[3]
    )))
    .await;
    for (target, expected) in [
        ("/api/login", Some("login")),
        ("/api/login?next=/x", Some("login")),
        ("/api//login", Some("login")),
        ("/api/login/", Some("api")),
        ("/api/loginx", Some("api")),
        ("/api/v1/login", Some("v1")),
        ("/api", Some("api")),
        ("/", Some("exact-root")),
        ("/other", None),
    ] {
        assert_eq!(
            reached(&proxy, "GET", target, &[]).await.as_deref(),
            expected,
            "{target}"
        );
    }
}

#[tokio::test]
async fn a_method_match_takes_only_its_methods() {
    let b = backends(&["writes", "reads"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: writes, matches: [{{path_prefix: /items, methods: [POST, PUT]}}, {{path_exact: /admin, methods: [DELETE]}}], stable: 'http://{}' }}\n  - {{ name: reads, path_prefix: /items, stable: 'http://{}' }}\n",
        b[0], b[1]
    )))
    .await;
    for (method, target, expected) in [
        ("POST", "/items/1", Some("writes")),
        ("PUT", "/items/1", Some("writes")),
        ("GET", "/items/1", Some("reads")),
        ("DELETE", "/items/1", Some("reads")),
        ("DELETE", "/admin", Some("writes")),
        ("GET", "/admin", None),
    ] {
        assert_eq!(
            reached(&proxy, method, target, &[]).await.as_deref(),
            expected,
            "{method} {target}"
        );
    }
}

#[tokio::test]
async fn both_header_conditions_are_needed_names_without_case_values_with() {
    let b = backends(&["beta", "main"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: beta\n    matches:\n      - headers: [{{name: x-env, value: beta}}, {{name: X-Team, value: a}}]\n    stable: 'http://{}'\n  - {{ name: main, stable: 'http://{}' }}\n",
        b[0], b[1]
    )))
    .await;
    for (fields, expected) in [
        (&[][..], "main"),
        (&[("x-env", "beta")][..], "main"),
        (&[("x-team", "a")][..], "main"),
        (&[("x-env", "beta"), ("x-team", "a")][..], "beta"),
        (&[("X-ENV", "beta"), ("x-TEAM", "a")][..], "beta"),
        (&[("x-env", "Beta"), ("x-team", "a")][..], "main"),
        (&[("x-env", "beta "), ("x-team", "a")][..], "beta"),
        (
            &[("x-env", "alpha"), ("x-env", "beta"), ("x-team", "a")][..],
            "beta",
        ),
        (&[("x-env", "beta"), ("x-team", "ab")][..], "main"),
    ] {
        assert_eq!(
            reached(&proxy, "GET", "/", fields).await.as_deref(),
            Some(expected),
            "{fields:?}"
        );
    }
}

#[tokio::test]
async fn a_query_match_reads_the_first_occurrence_percent_decoded() {
    let b = backends(&["v2", "main"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: v2\n    matches:\n      - query: [{{name: v, value: \"2\"}}, {{name: q, value: a b}}]\n    stable: 'http://{}'\n  - {{ name: main, stable: 'http://{}' }}\n",
        b[0], b[1]
    )))
    .await;
    for (target, expected) in [
        ("/?v=2&q=a%20b", "v2"),
        ("/x?q=a%20b&other=1&v=2", "v2"),
        ("/?%76=%32&q=a%20b", "v2"),
        ("/?v=2&v=3&q=a%20b", "v2"),
        ("/?v=3&v=2&q=a%20b", "main"),
        ("/?v=2", "main"),
        ("/?V=2&q=a%20b", "main"),
        ("/?v=2&q=a+b", "main"),
        ("/?v=22&q=a%20b", "main"),
        ("/", "main"),
    ] {
        assert_eq!(
            reached(&proxy, "GET", target, &[]).await.as_deref(),
            Some(expected),
            "{target}"
        );
    }
    // The backend gets the query as the client sent it.
    let (_, _, echo) = exchange(
        &h1_client(),
        Request::get(format!("http://{}/?%76=%32&q=a%20b", proxy.addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(echo.unwrap().0["target"], "/?%76=%32&q=a%20b");
}

#[tokio::test]
async fn more_conditions_win_in_the_gateway_api_order_then_config_order() {
    let names = [
        "one-header",
        "two-headers",
        "by-method",
        "shop",
        "deep",
        "by-query",
        "first-tie",
        "second-tie",
    ];
    let b = backends(&names).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: one-header, matches: [{{headers: [{{name: x-a, value: '1'}}]}}], stable: 'http://{}' }}\n  - {{ name: two-headers, matches: [{{headers: [{{name: x-a, value: '1'}}, {{name: x-b, value: '1'}}]}}], stable: 'http://{}' }}\n  - {{ name: by-method, matches: [{{methods: [PATCH]}}], stable: 'http://{}' }}\n  - {{ name: shop, hosts: [shop.example], stable: 'http://{}' }}\n  - {{ name: deep, path_prefix: /deep, stable: 'http://{}' }}\n  - {{ name: by-query, matches: [{{headers: [{{name: x-a, value: '1'}}, {{name: x-b, value: '1'}}], query: [{{name: k, value: '1'}}]}}], stable: 'http://{}' }}\n  - {{ name: first-tie, matches: [{{headers: [{{name: x-c, value: '1'}}]}}], stable: 'http://{}' }}\n  - {{ name: second-tie, matches: [{{headers: [{{name: x-d, value: '1'}}]}}], stable: 'http://{}' }}\n",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
    )))
    .await;
    let ab = [("x-a", "1"), ("x-b", "1")];
    for (method, target, host, fields, expected) in [
        ("GET", "/", None, &[("x-a", "1")][..], "one-header"),
        ("GET", "/", None, &ab[..], "two-headers"),
        // More query conditions win when the header conditions tie.
        ("GET", "/?k=1", None, &ab[..], "by-query"),
        // A method condition beats any number of header conditions.
        ("PATCH", "/?k=1", None, &ab[..], "by-method"),
        // A route naming the host beats an any-host route's conditions,
        // and its longer prefix too (the host first, as the Gateway API
        // orders hostnames)...
        ("PATCH", "/?k=1", Some("shop.example"), &ab[..], "shop"),
        ("PATCH", "/deep?k=1", Some("shop.example"), &ab[..], "shop"),
        // ... and among any-host routes a longer prefix beats a method.
        ("PATCH", "/deep?k=1", None, &ab[..], "deep"),
        // Equal precedence: the earlier route.
        (
            "GET",
            "/",
            None,
            &[("x-c", "1"), ("x-d", "1")][..],
            "first-tie",
        ),
        ("GET", "/", None, &[("x-d", "1")][..], "second-tie"),
    ] {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        if let Some(host) = host {
            all.push(("host", host));
        }
        assert_eq!(
            reached(&proxy, method, target, &all).await.as_deref(),
            Some(expected),
            "{method} {target} {host:?} {fields:?}"
        );
    }
    assert_eq!(reached(&proxy, "GET", "/", &[]).await, None);
}

const REQUEST_MODIFIER: &str = "    request_headers:\n      set: [{name: x-set, value: new}, {name: x-fresh, value: here}]\n      add: [{name: x-add, value: two}]\n      remove: [x-drop, cookie]\n";

/// A client request carrying the fields the modifier acts on.
fn modified_request(addr: SocketAddr, version: Version) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/m"))
        .version(version)
        .header("x-set", "old-1")
        .header("x-set", "old-2")
        .header("x-add", "one")
        .header("x-drop", "bye")
        .header("x-keep", "kept")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

fn assert_request_modified(echo: &Echo, how: &str) {
    assert_eq!(echo.values("x-set"), ["new"], "{how}");
    assert_eq!(echo.values("x-fresh"), ["here"], "{how}");
    assert_eq!(echo.values("x-add"), ["one", "two"], "{how}");
    assert!(echo.values("x-drop").is_empty(), "{how}");
    assert!(echo.values("cookie").is_empty(), "{how}");
    assert_eq!(echo.values("x-keep"), ["kept"], "{how}");
    // The proxy's own fields still follow.
    assert_eq!(echo.values("x-forwarded-for"), ["127.0.0.1"], "{how}");
    assert_eq!(echo.values("content-length"), ["7"], "{how}");
}

#[tokio::test]
async fn request_modifiers_reach_both_arms_from_http1_and_http2_clients() {
    let b = backends(&["stable", "canary"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: 'http://{}'\n    canary: 'http://{}'\n    canary_weight: 50\n{REQUEST_MODIFIER}",
        b[0], b[1]
    )))
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2_client(), Version::HTTP_2),
    ] {
        for _ in 0..4 {
            let (status, _, echo) = exchange(&client, modified_request(proxy.addr, version)).await;
            assert_eq!(status, StatusCode::OK);
            let echo = echo.unwrap();
            assert_request_modified(&echo, &format!("{version:?} to {}", echo.backend()));
            seen.insert(echo.backend().to_string());
        }
    }
    assert_eq!(seen.len(), 2, "both arms answered: {seen:?}");
}

#[tokio::test]
async fn a_request_failed_over_to_the_stable_carries_the_modified_request() {
    let stable = echo_backend("stable").await;
    // A canary nothing listens on: its connect is refused, the request
    // goes to the stable (failover) with a head built again.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: 'http://{stable}'\n    canary: 'http://{dead}'\n    canary_weight: 100\n{REQUEST_MODIFIER}"
    )))
    .await;
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2_client(), Version::HTTP_2),
    ] {
        let (status, _, echo) = exchange(&client, modified_request(proxy.addr, version)).await;
        assert_eq!(status, StatusCode::OK, "{version:?}");
        let echo = echo.unwrap();
        assert_eq!(echo.backend(), "stable");
        assert_request_modified(&echo, &format!("{version:?}, failed over"));
    }
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(m.sum("sluice_failovers_total", &[("route", "web")]), 2.0);
}

#[tokio::test]
async fn mirror_copies_carry_the_modified_request() {
    let stable = echo_backend("stable").await;
    let (copies, mut received) = tokio::sync::mpsc::unbounded_channel();
    let canary = serve_http(move |req: Request<hyper::body::Incoming>| {
        let copies = copies.clone();
        async move {
            let _ = copies.send(req.headers().clone());
            Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: 'http://{stable}'\n    canary: 'http://{canary}'\n    mirror: {{ percent: 100, methods: [POST] }}\n{REQUEST_MODIFIER}"
    )))
    .await;
    let (status, _, echo) =
        exchange(&h1_client(), modified_request(proxy.addr, Version::HTTP_11)).await;
    assert_eq!(status, StatusCode::OK);
    assert_request_modified(&echo.unwrap(), "stable");
    let copy = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("the copy within 10 s")
        .unwrap();
    let values = |name: &str| -> Vec<&str> {
        copy.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(values("x-sluice-mirror"), ["1"]);
    assert_eq!(values("x-set"), ["new"]);
    assert_eq!(values("x-add"), ["one", "two"]);
    assert!(values("x-drop").is_empty() && values("cookie").is_empty());
}

/// A bodiless POST's copy says `content-length: 0`, as the request the
/// stable got does (RFC 9110 §8.6): a backend that wants a length (411)
/// answers the copy as it answers the original.
#[tokio::test]
async fn a_bodiless_posts_copy_declares_its_length_as_the_original_does() {
    let (heads, mut received) = tokio::sync::mpsc::unbounded_channel();
    let recorder = move |arm: &'static str| {
        let heads = heads.clone();
        move |req: Request<hyper::body::Incoming>| {
            let heads = heads.clone();
            async move {
                let length = req.headers().get("content-length").cloned();
                let _ = heads.send((arm, length));
                Response::new(Full::new(Bytes::new()))
            }
        }
    };
    let stable = serve_http(recorder("stable")).await;
    let canary = serve_http(recorder("canary")).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: 'http://{stable}'\n    canary: 'http://{canary}'\n    canary_weight: 0\n    mirror: {{ percent: 100, methods: [POST] }}\n"
    )))
    .await;
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (_, answer) = closed_within(&mut raw, Duration::from_secs(5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let head = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("both requests within 10 s")
            .unwrap();
        seen.push(head);
    }
    seen.sort_by_key(|(arm, _)| *arm);
    let zero = Some(http::HeaderValue::from_static("0"));
    assert_eq!(seen, [("canary", zero.clone()), ("stable", zero)]);
}

#[tokio::test]
async fn modifiers_apply_to_an_h2c_backend_both_ways() {
    let b = backends(&["grpc-ish"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: h2\n    protocol: http2\n    stable: 'http://{}'\n{REQUEST_MODIFIER}    response_headers:\n      set: [{{name: x-r-set, value: new}}]\n      add: [{{name: x-r-add, value: two}}]\n      remove: [x-r-drop]\n",
        b[0]
    )))
    .await;
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2_client(), Version::HTTP_2),
    ] {
        let (status, headers, echo) =
            exchange(&client, modified_request(proxy.addr, version)).await;
        assert_eq!(status, StatusCode::OK);
        let echo = echo.unwrap();
        assert_eq!(echo.0["version"], "HTTP/2.0", "an h2c backend");
        let how = format!("{version:?} client, h2c backend");
        assert_eq!(echo.values("x-set"), ["new"], "{how}");
        assert_eq!(echo.values("x-add"), ["one", "two"], "{how}");
        assert!(echo.values("x-drop").is_empty(), "{how}");
        assert_response_modified(&headers, &how);
    }
}

fn assert_response_modified(headers: &HeaderMap, how: &str) {
    let values = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(values("x-r-set"), ["new"], "{how}");
    assert_eq!(values("x-r-add"), ["one", "two"], "{how}");
    assert!(values("x-r-drop").is_empty(), "{how}");
    assert_eq!(values("x-r-keep"), ["kept"], "{how}");
    assert_eq!(values("content-type"), ["application/json"], "{how}");
}

#[tokio::test]
async fn response_modifiers_change_the_backends_answers_not_the_proxys_own() {
    let b = backends(&["web"]).await;
    // A port nothing listens on: the proxy answers 502 itself.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let modifier = "    response_headers:\n      set: [{name: x-r-set, value: new}]\n      add: [{name: x-r-add, value: two}]\n      remove: [x-r-drop]\n";
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: 'http://{}'\n{modifier}  - name: dead\n    path_prefix: /dead\n    stable: 'http://{dead}'\n{modifier}",
        b[0]
    )))
    .await;
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2_client(), Version::HTTP_2),
    ] {
        let how = format!("{version:?} client");
        for method in ["GET", "HEAD"] {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{}/", proxy.addr))
                .version(version)
                .body(Full::default())
                .unwrap();
            let (status, headers, _) = exchange(&client, req).await;
            assert_eq!(status, StatusCode::OK, "{how} {method}");
            assert_response_modified(&headers, &format!("{how} {method}"));
        }
        let req = Request::get(format!("http://{}/dead", proxy.addr))
            .version(version)
            .body(Full::default())
            .unwrap();
        let (status, headers, _) = exchange(&client, req).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{how}");
        for name in ["x-r-set", "x-r-add"] {
            assert!(
                headers.get(name).is_none(),
                "{how}: the proxy's 502 has {name}"
            );
        }
    }
}

/// A config with one route holding `route_yaml` (indented under the
/// route) to `sluice-proxy check`: its exit code and errors.
fn check_route(route_yaml: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("route-matches");
    let path = dir.path.join("sluice.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:1\nroutes:\n  - name: web\n    stable: http://127.0.0.1:2\n{route_yaml}"
        ),
    )
    .unwrap();
    proxy_check(&path)
}

#[test]
fn every_bad_match_or_modifier_is_refused_naming_its_field() {
    for (yaml, expected) in [
        (
            "    matches: [{path_prefix: api}]\n",
            "routes[0].matches[0].path_prefix: `api` must start with '/'",
        ),
        (
            "    matches: [{path_exact: /a, path_prefix: /a}]\n",
            "routes[0].matches[0]: set one of `path_prefix`, `path_exact` and `path_segments`, not more",
        ),
        (
            "    path_prefix: /x\n    matches: [{path_exact: /a}]\n",
            "routes[0].path_prefix: `/x` and routes[0].matches are mutually exclusive",
        ),
        (
            "    matches: [{methods: [GET, get]}]\n",
            "routes[0].matches[0].methods[1]: `get` must be upper case (`GET`)",
        ),
        (
            "    matches: [{methods: [\"GE T\"]}]\n",
            "routes[0].matches[0].methods[0]: `GE T` is not a method",
        ),
        (
            "    matches: [{}, {headers: [{name: x-a, value: b}, {name: \"x a\", value: b}]}]\n",
            "routes[0].matches[1].headers[1].name: `x a` is not a header field name",
        ),
        (
            "    matches: [{headers: [{name: x-a, value: \"b\\u0001\"}]}]\n",
            "routes[0].matches[0].headers[0].value: \"b\\u{1}\" holds a control character",
        ),
        (
            "    matches: [{query: [{name: \"\", value: b}]}]\n",
            "routes[0].matches[0].query[0].name: must not be empty",
        ),
        (
            "    request_headers: {set: [{name: Host, value: b}]}\n",
            "routes[0].request_headers.set[0].name: `host` is a field the proxy sets or frames messages by",
        ),
        (
            "    request_headers: {add: [{name: x-forwarded-for, value: b}]}\n",
            "routes[0].request_headers.add[0].name: `x-forwarded-for` is a field the proxy sets",
        ),
        (
            "    request_headers: {remove: [x-sluice-mirror]}\n",
            "routes[0].request_headers.remove[0]: `x-sluice-mirror` is a field the proxy sets",
        ),
        (
            "    response_headers: {remove: [transfer-encoding]}\n",
            "routes[0].response_headers.remove[0]: `transfer-encoding` is a field the proxy sets",
        ),
        (
            "    response_headers: {set: [{name: proxy-authenticate, value: b}]}\n",
            "routes[0].response_headers.set[0].name: `proxy-authenticate` is a field the proxy sets",
        ),
        (
            "    request_headers: {set: [{name: x-a, value: b}], remove: [X-A]}\n",
            "routes[0].request_headers.set[0].name: `x-a` is also removed by routes[0].request_headers.remove[0]",
        ),
        (
            "    request_headers: {set: [{name: x-a, value: b}, {name: X-A, value: c}]}\n",
            "routes[0].request_headers.set[1].name: `x-a` is already set by routes[0].request_headers.set[0]",
        ),
        (
            "    response_headers: {add: [{name: x-a, value: \" b\"}]}\n",
            "routes[0].response_headers.add[0].value: \" b\" starts or ends with a space or tab",
        ),
        (
            "    response_headers: {add: [{name: \"x:a\", value: b}]}\n",
            "routes[0].response_headers.add[0].name: `x:a` is not a header field name",
        ),
        (
            "    matches: [{path_prefix: /a, methods: [GET]}]\n  - { name: other, stable: 'http://127.0.0.1:3', matches: [{path_exact: /b}, {methods: [GET], path_prefix: /a}] }\n",
            "routes[1].matches[1]: an earlier route or match already has the same hosts and conditions",
        ),
        (
            "    matches: [{path_segments: /a, path_exact: /a}]\n",
            "routes[0].matches[0]: set one of `path_prefix`, `path_exact` and `path_segments`, not more",
        ),
        (
            "    matches: [{path_segments: a/}]\n",
            "routes[0].matches[0].path_segments: `a/` must start with '/'",
        ),
        (
            "    matches: [{headers: [{name: x-canary, value: always}], backend: canary}]\n",
            "routes[0].matches[0].backend: `canary` needs routes[0].canary to be set",
        ),
        (
            "    matches: [{backend: stable}]\n",
            "routes[0].matches[0].backend",
        ),
        (
            "    matches: [{headers: [{name: HOST, value: a.example}]}]\n",
            "routes[0].matches[0].headers[0].name: `HOST`: match the request's host with the route's `hosts`",
        ),
        (
            "    direct_response: {status: 500}\n",
            "routes[0].stable: and routes[0].direct_response are mutually exclusive",
        ),
        (
            "  - { name: gone, path_prefix: /gone }\n",
            "routes[1].stable: is required (the backend's URL), unless routes[1].direct_response is set",
        ),
        (
            "  - { name: gone, path_prefix: /gone, direct_response: {status: 99} }\n",
            "routes[1].direct_response.status: 99 is not a final status (200-599)",
        ),
        (
            "  - { name: gone, path_prefix: /gone, direct_response: {status: 500}, canary: 'http://127.0.0.1:3' }\n",
            "routes[1].canary: needs a backend; routes[1].direct_response answers without one",
        ),
        (
            "    request_headers: {set: [{name: X_Forwarded_For, value: b}]}\n",
            "routes[0].request_headers.set[0].name: `x_forwarded_for` is a field the proxy sets",
        ),
        (
            "    request_headers: {add: [{name: Transfer_Encoding, value: chunked}]}\n",
            "routes[0].request_headers.add[0].name: `transfer_encoding` is a field the proxy sets",
        ),
        (
            "    response_headers: {set: [{name: Content_Length, value: '1'}]}\n",
            "routes[0].response_headers.set[0].name: `content_length` is a field the proxy sets",
        ),
        (
            "    request_headers: {remove: [x_sluice_mirror]}\n",
            "routes[0].request_headers.remove[0]: `x_sluice_mirror` is a field the proxy sets",
        ),
        (
            "    matches: [{path_prefix: /a, methods: [GET]}]\n    unknown_thing: 1\n",
            "routes[0].unknown_thing: unknown field",
        ),
    ] {
        let (code, errors) = check_route(yaml);
        assert_eq!(code, Some(2), "{yaml}: {errors}");
        assert!(
            errors.contains(expected),
            "{yaml}: missing {expected:?} in:\n{errors}"
        );
    }
    let (code, errors) = check_route(
        "    matches: [{path_exact: /a, methods: [GET], headers: [{name: x-a, value: b}], query: [{name: v, value: '2'}]}]\n    request_headers: {set: [{name: x-a, value: b}], add: [{name: x-a, value: c}], remove: [x-b]}\n    response_headers: {set: [{name: cache-control, value: no-store}]}\n",
    );
    assert_eq!(code, Some(0), "a good config passes: {errors}");
    let (code, errors) = check_route(
        "    canary: http://127.0.0.1:3\n    matches: [{path_segments: /api/}, {path_segments: /api, headers: [{name: cookie, value: beta=1}], backend: canary}]\n    request_headers: {set: [{name: x_ok, value: b}]}\n  - { name: gone, path_prefix: /gone, direct_response: {status: 500} }\n",
    );
    assert_eq!(code, Some(0), "the new fields pass: {errors}");
}

#[tokio::test]
async fn a_reload_with_bad_matches_keeps_the_running_table() {
    let b = backends(&["login", "main"]).await;
    let proxy = ChildProxy::start(
        &format!(
            "  - name: login\n    matches: [{{path_exact: /login, methods: [POST]}}]\n    stable: 'http://{}'\n  - {{ name: main, stable: 'http://{}' }}\n",
            b[0], b[1]
        ),
        &[],
    )
    .await;
    let backend_of = |method: &'static str, path: &'static str| {
        let url = format!("http://{}{path}", proxy.addr);
        async move {
            let req = Request::builder()
                .method(method)
                .uri(url)
                .body(Full::default())
                .unwrap();
            let (_, headers, _) = send(&h1_client(), req).await.unwrap();
            headers["x-backend"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(backend_of("POST", "/login").await, "login");
    assert_eq!(backend_of("GET", "/login").await, "main");
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();
    proxy
        .write_refused_config(
            &original.replace("methods: [POST]", "methods: [post]"),
            1.0,
            "the bad reload to be counted",
        )
        .await;
    let (code, errors) = proxy_check(&proxy.config_path);
    assert_eq!(code, Some(2));
    assert!(
        errors.contains("routes[0].matches[0].methods[0]: `post` must be upper case"),
        "{errors}"
    );
    assert_eq!(backend_of("POST", "/login").await, "login");
    assert_eq!(backend_of("GET", "/login").await, "main");
    // A good change still applies.
    std::fs::write(
        &proxy.config_path,
        original.replace("methods: [POST]", "methods: [GET]"),
    )
    .unwrap();
    eventually(
        "the good reload to route GET /login to login",
        Duration::from_secs(10),
        || async { (backend_of("GET", "/login").await == "login").then_some(()) },
    )
    .await;
    assert_eq!(backend_of("POST", "/login").await, "main");
}

/// The status and, for a backend's answer, the backend and the target it
/// received, for `method target` with `fields` from a client of `version`.
async fn sent(
    proxy: &ProxyHandle,
    version: Version,
    method: &str,
    target: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, Option<(String, String)>) {
    let client = if version == Version::HTTP_2 {
        h2_client()
    } else {
        h1_client()
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{target}", proxy.addr))
        .version(version);
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    let (status, _, echo) = exchange(&client, req.body(Full::default()).unwrap()).await;
    let echo = echo.map(|e| {
        (
            e.backend().to_string(),
            e.0["target"].as_str().unwrap().to_string(),
        )
    });
    (status, echo)
}

const VERSIONS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];

#[tokio::test]
async fn a_real_exact_path_beats_a_segment_prefix_with_more_conditions() {
    // Review finding 1: a prefix with a header or a method never takes a
    // path an exact match names; whole segments never take `/apix`.
    let b = backends(&["exact", "seg-header", "seg-get", "docs"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: exact, matches: [{{path_exact: /api}}], stable: 'http://{}' }}\n  - {{ name: seg-header, matches: [{{path_segments: /api, headers: [{{name: x-v, value: '1'}}]}}], stable: 'http://{}' }}\n  - {{ name: seg-get, matches: [{{path_segments: /api, methods: [GET]}}], stable: 'http://{}' }}\n  - {{ name: docs, matches: [{{path_segments: /docs/}}], stable: 'http://{}' }}\n",
        b[0], b[1], b[2], b[3]
    )))
    .await;
    for version in VERSIONS {
        for (method, target, fields, expected) in [
            ("GET", "/api", &[][..], Some("exact")),
            ("POST", "/api", &[("x-v", "1")][..], Some("exact")),
            ("GET", "/api", &[("x-v", "1")][..], Some("exact")),
            ("GET", "/api/", &[][..], Some("seg-get")),
            ("GET", "/api/x", &[][..], Some("seg-get")),
            ("POST", "/api/x", &[("x-v", "1")][..], Some("seg-header")),
            // A header condition and a method: the method wins.
            ("GET", "/api/x", &[("x-v", "1")][..], Some("seg-get")),
            ("GET", "/apix", &[][..], None),
            ("POST", "/api/x", &[][..], None),
            // `/docs/` is the same as `/docs`: the segment itself too.
            ("GET", "/docs", &[][..], Some("docs")),
            ("GET", "/docs/a", &[][..], Some("docs")),
            ("GET", "/docsx", &[][..], None),
        ] {
            let (status, echo) = sent(&proxy, version, method, target, fields).await;
            let how = format!("{version:?} {method} {target} {fields:?}");
            match expected {
                Some(name) => {
                    assert_eq!(status, StatusCode::OK, "{how}");
                    assert_eq!(echo.unwrap().0, name, "{how}");
                }
                None => assert_eq!(status, StatusCode::NOT_FOUND, "{how}"),
            }
        }
    }
}

#[tokio::test]
async fn a_match_to_the_canary_ranks_by_its_own_conditions_and_takes_no_turn_from_the_split() {
    // Review finding 3: an A/B match keeps its header in the precedence.
    let b = backends(&["stable", "canary", "team"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    matches:\n      - {{ path_prefix: / }}\n      - {{ headers: [{{name: x-canary, value: always}}], backend: canary }}\n    stable: 'http://{}'\n    canary: 'http://{}'\n    canary_weight: 50\n  - {{ name: team, matches: [{{headers: [{{name: x-team, value: a}}]}}], stable: 'http://{}' }}\n",
        b[0], b[1], b[2]
    )))
    .await;
    let canary = [("x-canary", "always")];
    // One header each: the earlier route's match, to the canary.
    let (_, echo) = sent(
        &proxy,
        Version::HTTP_11,
        "GET",
        "/",
        &[("x-canary", "always"), ("x-team", "a")],
    )
    .await;
    assert_eq!(echo.unwrap().0, "canary");
    let (_, echo) = sent(&proxy, Version::HTTP_2, "GET", "/", &[("x-team", "a")]).await;
    assert_eq!(echo.unwrap().0, "team");
    // Four weighted requests between matched ones: the exact split still
    // gives the canary two of the four, and each match goes to it.
    let mut weighted = Vec::new();
    for i in 0..4 {
        let version = VERSIONS[i % 2];
        let (_, echo) = sent(&proxy, version, "GET", "/", &canary).await;
        assert_eq!(echo.unwrap().0, "canary", "matched request {i}");
        let (_, echo) = sent(&proxy, version, "GET", "/", &[]).await;
        weighted.push(echo.unwrap().0);
    }
    assert_eq!(
        weighted.iter().filter(|b| *b == "canary").count(),
        2,
        "{weighted:?}"
    );
    let m = scrape(proxy.admin_addr).await;
    let count = |backend: &str, decision: &str| {
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "web"),
                ("backend", backend),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(count("canary", "match"), 5.0);
    assert_eq!(count("canary", "weight"), 2.0);
    assert_eq!(count("stable", "weight"), 2.0);
}

#[tokio::test]
async fn a_direct_response_is_the_proxys_own_answer_from_both_protocols() {
    let b = backends(&["web"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: 'http://{}' }}\n  - {{ name: gone, path_prefix: /gone, direct_response: {{status: 500}} }}\n  - name: teapot\n    matches: [{{path_exact: /tea, methods: [POST]}}]\n    direct_response: {{status: 418, body: \"short and stout\\n\"}}\n",
        b[0]
    )))
    .await;
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2_client(), Version::HTTP_2),
    ] {
        for (method, target, status, body) in [
            ("GET", "/gone", StatusCode::INTERNAL_SERVER_ERROR, ""),
            (
                "GET",
                "/gone/deeper?x=1",
                StatusCode::INTERNAL_SERVER_ERROR,
                "",
            ),
            ("POST", "/tea", StatusCode::IM_A_TEAPOT, "short and stout\n"),
            ("HEAD", "/gone", StatusCode::INTERNAL_SERVER_ERROR, ""),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{}{target}", proxy.addr))
                .version(version)
                .body(Full::default())
                .unwrap();
            let (got, headers, answer) = send(&client, req).await.unwrap();
            let how = format!("{version:?} {method} {target}");
            assert_eq!(got, status, "{how}");
            assert_eq!(answer, body, "{how}");
            assert!(
                headers.get("x-backend").is_none(),
                "{how}: a backend answered"
            );
        }
        // Not the direct route's match: the backend.
        let (status, echo) = sent(&proxy, version, "GET", "/tea", &[]).await;
        assert_eq!((status, echo.unwrap().0.as_str()), (StatusCode::OK, "web"));
    }
    // As the 404: on no backend's series; the backend got only its own.
    let m = scrape(proxy.admin_addr).await;
    for route in ["gone", "teapot"] {
        assert_eq!(
            m.matching("sluice_requests_total", &[("route", route)])
                .count(),
            0,
            "{route} has series"
        );
    }
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("route", "web"), ("code", "200")]
        ),
        2.0
    );
    assert_eq!(m.sum("sluice_requests_total", &[("route", "web")]), 2.0);
    // Counted as the proxy's own answers: 3 per protocol on `gone`, 1 on
    // `teapot`; nothing unrouted yet.
    assert_eq!(
        m.sum(
            "sluice_direct_responses_total",
            &[("route", "gone"), ("code", "500")]
        ),
        6.0
    );
    assert_eq!(
        m.sum(
            "sluice_direct_responses_total",
            &[("route", "teapot"), ("code", "418")]
        ),
        2.0
    );
    assert_eq!(m.sum("sluice_unrouted_requests_total", &[]), 0.0);
}

/// A request no route holds for is the proxy's 404, counted in
/// `sluice_unrouted_requests_total` and on no route's series.
#[tokio::test]
async fn an_unrouted_request_is_counted_apart() {
    let b = backends(&["web"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, hosts: [web.example], stable: 'http://{}' }}\n",
        b[0]
    )))
    .await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        // The authority is 127.0.0.1:PORT, which the route does not name.
        let (status, echo) = sent(&proxy, version, "GET", "/x", &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{version:?}");
        assert!(echo.is_none());
    }
    let m = scrape(proxy.admin_addr).await;
    assert_eq!(m.sum("sluice_unrouted_requests_total", &[]), 2.0);
    assert_eq!(m.sum("sluice_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn escaped_unreserved_characters_and_dot_segments_route_as_the_decoded_path() {
    // Review finding 9: `/ap%69` is `/api` to a decoding backend, so it
    // must meet `/api`'s route (and its method limit), not the default.
    let b = backends(&["api", "admin", "main", "home"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: api, matches: [{{path_segments: /api, methods: [GET]}}], stable: 'http://{}' }}\n  - {{ name: admin, matches: [{{path_exact: /admin}}], stable: 'http://{}' }}\n  - {{ name: main, stable: 'http://{}' }}\n  - {{ name: home, path_prefix: /%7Eme, stable: 'http://{}' }}\n",
        b[0], b[1], b[2], b[3]
    )))
    .await;
    for version in VERSIONS {
        for (method, target, expected) in [
            ("GET", "/ap%69", "api"),
            ("GET", "/%61%50%69", "main"),
            ("GET", "/%61p%69/v1", "api"),
            ("GET", "/%2e%2e/api", "api"),
            ("GET", "/x/%2E%2e/api/v1", "api"),
            ("GET", "/x/%2e/../api", "api"),
            ("POST", "/ap%69", "main"),
            // `%2F` is no separator: `/api%2Fx` is one segment.
            ("GET", "/api%2Fx", "main"),
            ("GET", "/api%2F..%2Fadmin", "main"),
            ("GET", "/adm%69n", "admin"),
            // `;` is an ordinary character, as to Envoy and nginx.
            ("GET", "/admin;x", "main"),
            // A config path is read the same way.
            ("GET", "/~me/x", "home"),
            ("GET", "/%7eme", "home"),
        ] {
            let how = format!("{version:?} {method} {target}");
            let (status, echo) = sent(&proxy, version, method, target, &[]).await;
            assert_eq!(status, StatusCode::OK, "{how}");
            let (backend, received) = echo.unwrap();
            assert_eq!(backend, expected, "{how}");
            // Forwarded as sent: the routing decodes, the target does not change.
            assert_eq!(received, target, "{how}");
        }
    }
}

#[tokio::test]
async fn a_cookie_match_compares_the_joined_fields_the_same_for_both_protocols() {
    // Review finding 10: an HTTP/2 client may split its cookies into
    // fields of their own; an HTTP/1.1 client sends one.
    let b = backends(&["beta", "main"]).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: beta\n    matches: [{{headers: [{{name: Cookie, value: 'a=1; beta=1'}}]}}]\n    stable: 'http://{}'\n  - {{ name: main, stable: 'http://{}' }}\n",
        b[0], b[1]
    )))
    .await;
    for (version, fields, expected) in [
        (Version::HTTP_11, &[("cookie", "a=1; beta=1")][..], "beta"),
        (Version::HTTP_2, &[("cookie", "a=1; beta=1")][..], "beta"),
        (
            Version::HTTP_2,
            &[("cookie", "a=1"), ("cookie", "beta=1")][..],
            "beta",
        ),
        (
            Version::HTTP_2,
            &[("cookie", "beta=1"), ("cookie", "a=1")][..],
            "main",
        ),
        (Version::HTTP_2, &[("cookie", "a=1")][..], "main"),
        (
            Version::HTTP_2,
            &[("cookie", "a=1"), ("cookie", "beta=1"), ("cookie", "c=2")][..],
            "main",
        ),
        (Version::HTTP_11, &[("cookie", "beta=1")][..], "main"),
        (Version::HTTP_11, &[("cookie", "a=1; beta=12")][..], "main"),
        (Version::HTTP_11, &[][..], "main"),
    ] {
        let (status, echo) = sent(&proxy, version, "GET", "/", fields).await;
        assert_eq!(status, StatusCode::OK, "{version:?} {fields:?}");
        assert_eq!(echo.unwrap().0, expected, "{version:?} {fields:?}");
    }
}
