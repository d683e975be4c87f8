//! `sluice-proxy --gateway-api` on the fake API server with the generated
//! Gateway API CRDs: objects applied with the real kubectl, a real proxy
//! process started with a kubeconfig for the fake, real backends on
//! 127.0.0.1 (their Services' cluster IPs are 127.0.0.1 and their ports
//! the backends' ports).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::Value;
use sluice_tests::fake_kube::{FakeKube, Options};
use sluice_tests::*;

struct World {
    _fake: FakeKube,
    dir: TempDir,
    kubeconfig: PathBuf,
    port: u16,
    admin: SocketAddr,
    proxy: Option<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.proxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A backend that answers `{"backend": NAME, "headers": {name: [values]}}`
/// (every request field it got) with answer fields `x-internal: secret`
/// and `x-kept: yes`.
async fn header_echo_backend(name: &'static str) -> u16 {
    serve_http(move |req: Request<hyper::body::Incoming>| async move {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, v) in req.headers() {
            seen.entry(n.as_str().to_string())
                .or_default()
                .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let body = serde_json::json!({"backend": name, "headers": seen}).to_string();
        Response::builder()
            .header("x-internal", "secret")
            .header("x-kept", "yes")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    })
    .await
    .port()
}

async fn named_backend(name: &'static str) -> u16 {
    serve_http(
        move |_req| async move { Response::new(Full::new(Bytes::from_static(name.as_bytes()))) },
    )
    .await
    .port()
}

impl World {
    async fn start() -> Self {
        let fake = FakeKube::start_with(Options {
            tls: true,
            ..Options::default()
        })
        .await;
        fake.create_namespace("shop");
        let dir = TempDir::new("gateway-proxy");
        let kubeconfig = dir.path.join("config");
        fake.kubeconfig(&kubeconfig);
        let world = Self {
            _fake: fake,
            dir,
            kubeconfig,
            port: free_port(),
            admin: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            proxy: None,
        };
        world.apply(&gateway_crds::yaml());
        world
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        kubectl_in(&self.kubeconfig, &self.dir.path, args)
    }

    fn apply(&self, yaml: &str) {
        let path = self.dir.path.join("manifest.yaml");
        std::fs::write(&path, yaml).expect("write manifest");
        let (ok, out, err) = self.kubectl(&["apply", "-f", &path.display().to_string()]);
        assert!(ok, "kubectl apply failed: {err}\n{out}");
    }

    fn get(&self, what: &str) -> Value {
        let (ok, out, err) = self.kubectl(&["get", what, "-o", "json"]);
        assert!(ok, "kubectl get {what}: {err}");
        serde_json::from_str(&out).expect("json")
    }

    fn service(&self, name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: 127.0.0.1\n  ports: [{{port: {port}}}]\n---\n"
        )
    }

    fn gateway(&self) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: sluice}}\nspec: {{controllerName: sluice.dev/gateway}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {{name: http, port: {}, protocol: HTTP, hostname: '*.example.com'}}\n---\n",
            self.port
        )
    }

    async fn start_proxy(&mut self) {
        let child = Command::new(bin("sluice-proxy"))
            .args([
                "--gateway-api",
                "--gateway-bind",
                "127.0.0.1",
                "--gateway-admin-listen",
                &self.admin.to_string(),
                "--workers",
                "1",
                "--drain-delay",
                "0s",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice-proxy");
        self.proxy = Some(child);
        wait_until_ok(
            "sluice-proxy --gateway-api to be ready",
            &format!("http://{}/readyz", self.admin),
            Duration::from_secs(30),
        )
        .await;
    }

    /// GET `path` with `Host: host` and extra headers: (status, body).
    async fn request(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req =
            Request::get(format!("http://127.0.0.1:{}{path}", self.port)).header("host", host);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let (status, _, body) = send(&h1_client(), req.body(Full::default()).expect("request"))
            .await
            .expect("request through the proxy");
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    }

    /// `method` `path` with `Host: host` and extra headers: (status,
    /// answer header fields, body).
    async fn exchange(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port))
            .header("host", host);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let (status, fields, body) =
            send(&h1_client(), req.body(Full::default()).expect("request"))
                .await
                .expect("request through the proxy");
        (
            status.as_u16(),
            fields,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn counts(&self, n: usize, host: &str, path: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let (status, body) = self.request(host, path, &[]).await;
            assert_eq!(status, 200, "{body}");
            *counts.entry(body).or_default() += 1;
        }
        counts
    }

    /// This controller's conditions of HTTPRoute `name`'s first parent.
    fn route_conditions(&self, name: &str) -> Option<BTreeMap<String, (String, String, i64)>> {
        self.conditions(&format!("httproute/{name}"))
    }

    /// This controller's conditions of route `what` (`KIND/NAME`)'s first
    /// parent, once they are of the route's current generation.
    fn conditions(&self, what: &str) -> Option<BTreeMap<String, (String, String, i64)>> {
        let route = self.get(what);
        let generation = route["metadata"]["generation"].as_i64()?;
        let parent = route["status"]["parents"]
            .as_array()?
            .iter()
            .find(|p| p["controllerName"] == "sluice.dev/gateway")?;
        let conds: BTreeMap<String, (String, String, i64)> = parent["conditions"]
            .as_array()?
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or("").to_string(),
                    (
                        c["status"].as_str().unwrap_or("").to_string(),
                        c["reason"].as_str().unwrap_or("").to_string(),
                        c["observedGeneration"].as_i64().unwrap_or(-1),
                    ),
                )
            })
            .collect();
        // Only a status of the current generation counts.
        conds.values().all(|c| c.2 == generation).then_some(conds)
    }
}

fn http_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [{name}.example.com]\n  rules:\n{rules}---\n"
    )
}

fn weighted(stable: u16, canary: u16, w_stable: u32, w_canary: u32) -> String {
    format!(
        "  - backendRefs:\n    - {{name: stable, port: {stable}, weight: {w_stable}}}\n    - {{name: canary, port: {canary}, weight: {w_canary}}}\n  - matches: [{{headers: [{{name: x-canary, value: always}}]}}]\n    backendRefs: [{{name: canary, port: {canary}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproutes_are_served_by_host_path_header_and_exact_weights() {
    let mut w = World::start().await;
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    let api = named_backend("api").await;
    let mut yaml = w.gateway();
    yaml += &w.service("stable", stable);
    yaml += &w.service("canary", canary);
    yaml += &w.service("api", api);
    yaml += &http_route("web", &weighted(stable, canary, 90, 10));
    yaml += &format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: default}}\nspec:\n  parentRefs: [{{name: web, sectionName: http}}]\n  hostnames: [web.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n    backendRefs: [{{name: api, port: {api}}}]\n"
    );
    w.apply(&yaml);
    w.start_proxy().await;

    let conds = eventually(
        "HTTPRoute web accepted",
        Duration::from_secs(20),
        || async {
            w.route_conditions("web")
                .filter(|c| c.get("Accepted").is_some_and(|a| a.0 == "True"))
        },
    )
    .await;
    assert_eq!(conds["ResolvedRefs"].0, "True", "{conds:?}");
    eventually(
        "HTTPRoute api accepted",
        Duration::from_secs(20),
        || async {
            w.route_conditions("api")
                .filter(|c| c.get("Accepted").is_some_and(|a| a.0 == "True"))
        },
    )
    .await;

    // Path: /api goes to the api route (the longer prefix), even on web's host.
    let (status, body) = w.request("web.example.com", "/api/users", &[]).await;
    assert_eq!((status, body.as_str()), (200, "api"));
    // Header match: always the canary.
    for _ in 0..20 {
        let (status, body) = w
            .request("web.example.com", "/", &[("x-canary", "always")])
            .await;
        assert_eq!((status, body.as_str()), (200, "canary"));
    }
    // Hostname: a host the route does not name is not served.
    let (status, _) = w.request("other.example.com", "/", &[]).await;
    assert_eq!(status, 404);
    // Exact weights.
    let counts = w.counts(1000, "web.example.com", "/").await;
    assert_eq!(counts.get("stable"), Some(&900), "{counts:?}");
    assert_eq!(counts.get("canary"), Some(&100), "{counts:?}");
    // The route label is NS/NAME/RULE_INDEX.
    let (_, _, metrics) = get(&format!("http://{}/metrics", w.admin))
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("route=\"default/web/0\""), "{metrics}");
    assert!(metrics.contains("route=\"default/api/0\""), "{metrics}");

    // Gateway and GatewayClass status.
    let gw = w.get("gateway/web");
    let gw_conds = gw["status"]["conditions"].to_string();
    assert!(
        gw_conds.contains("\"Programmed\"") && !gw_conds.contains("\"False\""),
        "{gw_conds}"
    );
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 2, "{gw}");
    let class = w.get("gatewayclass/sluice");
    assert_eq!(
        class["status"]["conditions"][0]["status"], "True",
        "{class}"
    );

    // A change of weights with kubectl apply, served without a restart.
    let pid = w.proxy.as_ref().expect("proxy").id();
    w.apply(&http_route("web", &weighted(stable, canary, 50, 50)));
    eventually(
        "the 50/50 weights served",
        Duration::from_secs(20),
        || async {
            let counts = w.counts(100, "web.example.com", "/").await;
            (counts.get("canary") == Some(&50)).then_some(())
        },
    )
    .await;
    let counts = w.counts(1000, "web.example.com", "/").await;
    assert_eq!(counts.get("stable"), Some(&500), "{counts:?}");
    assert_eq!(counts.get("canary"), Some(&500), "{counts:?}");
    let child = w.proxy.as_mut().expect("proxy");
    assert_eq!(child.id(), pid);
    assert!(
        child.try_wait().expect("status").is_none(),
        "the proxy kept running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_filter_and_missing_backend_are_refused_in_status() {
    let mut w = World::start().await;
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    let mut yaml = w.gateway();
    yaml += &w.service("stable", stable);
    yaml += &w.service("canary", canary);
    // Rule 0 alone would be served; rule 1 has a URLRewrite.
    yaml += &http_route(
        "rewrite",
        &format!(
            "  - backendRefs: [{{name: stable, port: {stable}}}]\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]\n    backendRefs: [{{name: canary, port: {canary}}}]\n"
        ),
    );
    yaml += &http_route(
        "missing",
        &format!(
            "  - backendRefs: [{{name: stable, port: {stable}}}, {{name: nowhere, port: 80}}]\n"
        ),
    );
    yaml += &http_route(
        "fine",
        &format!("  - backendRefs: [{{name: canary, port: {canary}}}]\n"),
    );
    w.apply(&yaml);
    w.start_proxy().await;

    let conds = eventually(
        "HTTPRoute rewrite refused",
        Duration::from_secs(20),
        || async {
            w.route_conditions("rewrite")
                .filter(|c| c.contains_key("Accepted"))
        },
    )
    .await;
    assert_eq!(conds["Accepted"].0, "False", "{conds:?}");
    assert_eq!(conds["Accepted"].1, "UnsupportedValue", "{conds:?}");
    let route = w.get("httproute/rewrite");
    assert!(
        route["status"]["parents"][0]["conditions"]
            .to_string()
            .contains("spec.rules[1].filters[0].type: URLRewrite"),
        "{route}"
    );
    let conds = eventually(
        "HTTPRoute missing reported",
        Duration::from_secs(20),
        || async {
            w.route_conditions("missing")
                .filter(|c| c.contains_key("ResolvedRefs"))
        },
    )
    .await;
    assert_eq!(conds["ResolvedRefs"].0, "False", "{conds:?}");
    assert_eq!(conds["ResolvedRefs"].1, "BackendNotFound", "{conds:?}");

    // The good route is served; the refused route is not, not even half.
    eventually("route fine served", Duration::from_secs(20), || async {
        (w.request("fine.example.com", "/", &[]).await == (200, "canary".to_string())).then_some(())
    })
    .await;
    assert_eq!(w.request("rewrite.example.com", "/", &[]).await.0, 404);
    assert_eq!(w.request("rewrite.example.com", "/v2/x", &[]).await.0, 404);
    // A rule whose backendRef does not resolve is answered 500 by the
    // proxy (the Gateway API's answer), not passed to a less specific route.
    let (status, body) = w.request("missing.example.com", "/", &[]).await;
    assert_eq!((status, body.as_str()), (500, ""));

    // Creating the missing Service resolves the route, without a restart.
    w.apply(&w.service("nowhere", 80));
    let conds = eventually(
        "HTTPRoute missing resolved",
        Duration::from_secs(20),
        || async {
            w.route_conditions("missing")
                .filter(|c| c.get("ResolvedRefs").is_some_and(|r| r.0 == "True"))
        },
    )
    .await;
    assert_eq!(
        conds["Accepted"],
        (
            "True".to_string(),
            "Accepted".to_string(),
            conds["Accepted"].2
        )
    );
    eventually("route missing served", Duration::from_secs(20), || async {
        (w.request("missing.example.com", "/", &[("x", "y")]).await == (200, "stable".to_string()))
            .then_some(())
    })
    .await;
}

/// The cold review's reproductions (findings 1, 2, 3, 6, 7), applied with
/// kubectl and served by the real proxy: an `Exact` path beats a newer
/// route's `PathPrefix` with conditions, and the prefix is whole
/// segments; an A/B rule keeps its own header in the precedence and is
/// counted `decision="match"`; a route on two listeners of one port
/// serves both hostnames; a newer route with an identical match is
/// served with its other matches; a rule with a missing Service is
/// answered 500 while the route's other rule is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_reproductions_are_served_as_the_gateway_api_says() {
    let mut w = World::start().await;
    let mut ports = BTreeMap::new();
    let mut yaml = w.gateway();
    for name in ["a", "b", "c", "stable", "canary", "team"] {
        let port = named_backend(name).await;
        ports.insert(name, port);
        yaml += &w.service(name, port);
    }
    let p = |name: &str| ports[name];
    // A second Gateway of the class, two listeners on the same port.
    yaml += &format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: multi, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {{name: foo, port: {0}, protocol: HTTP, hostname: foo.test}}\n  - {{name: bar, port: {0}, protocol: HTTP, hostname: bar.test}}\n---\n",
        w.port
    );
    // Finding 1 (g/1.json). Created in one apply (one second): the names
    // order them, `exact` before `prefixhdr`.
    yaml += &http_route(
        "exact",
        &format!(
            "  - matches: [{{path: {{type: Exact, value: /api}}}}]\n    backendRefs: [{{name: a, port: {}}}]\n",
            p("a")
        ),
    );
    yaml += &format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: prefixhdr, namespace: default}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [exact.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-v, value: '1'}}]}}]\n    backendRefs: [{{name: b, port: {}}}]\n  - matches: [{{path: {{type: PathPrefix, value: /api}}, method: GET}}]\n    backendRefs: [{{name: c, port: {}}}]\n---\n",
        p("b"),
        p("c")
    );
    // Finding 3 (g/10.json).
    yaml += &http_route(
        "ab",
        &format!(
            "  - backendRefs:\n    - {{name: stable, port: {0}, weight: 90}}\n    - {{name: canary, port: {1}, weight: 10}}\n  - matches: [{{headers: [{{name: x-canary, value: always}}]}}]\n    backendRefs: [{{name: canary, port: {1}}}]\n  - matches: [{{headers: [{{name: x-team, value: a}}]}}]\n    backendRefs: [{{name: team, port: {2}}}]\n",
            p("stable"),
            p("canary"),
            p("team")
        ),
    );
    // Finding 2 (g/5.json).
    yaml += &format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: both, namespace: default}}\nspec:\n  parentRefs: [{{name: multi, sectionName: foo}}, {{name: multi, sectionName: bar}}]\n  rules:\n  - backendRefs: [{{name: a, port: {}}}]\n---\n",
        p("a")
    );
    // Finding 6 (g/8.json): r1 before r2.
    yaml += &format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r1, namespace: default}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [tie.example.com]\n  rules:\n  - backendRefs: [{{name: a, port: {}}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r2, namespace: default}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [tie.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}, {{path: {{type: PathPrefix, value: /special}}}}]\n    backendRefs: [{{name: b, port: {}}}]\n---\n",
        p("a"),
        p("b")
    );
    // Finding 7 (partially-invalid-via-reference-grant's shape).
    yaml += &http_route(
        "partial",
        &format!(
            "  - backendRefs: [{{name: a, port: {}}}]\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    backendRefs: [{{name: nowhere, port: 80}}]\n",
            p("a")
        ),
    );
    w.apply(&yaml);
    w.start_proxy().await;
    for name in ["exact", "prefixhdr", "ab", "r1", "r2", "partial"] {
        eventually(
            &format!("HTTPRoute {name} accepted"),
            Duration::from_secs(20),
            || async {
                w.route_conditions(name)
                    .filter(|c| c.get("Accepted").is_some_and(|a| a.0 == "True"))
            },
        )
        .await;
    }

    // Finding 1: the exact path wins over the prefix with conditions.
    let (status, _, body) = w.exchange("GET", "exact.example.com", "/api", &[]).await;
    assert_eq!((status, body.as_str()), (200, "a"));
    let (status, _, body) = w
        .exchange("POST", "exact.example.com", "/api", &[("x-v", "1")])
        .await;
    assert_eq!((status, body.as_str()), (200, "a"));
    let (status, _, body) = w.exchange("GET", "exact.example.com", "/api/x", &[]).await;
    assert_eq!((status, body.as_str()), (200, "c"));
    let (status, _, body) = w
        .exchange("POST", "exact.example.com", "/api/x", &[("x-v", "1")])
        .await;
    assert_eq!((status, body.as_str()), (200, "b"));
    let (status, _, _) = w.exchange("GET", "exact.example.com", "/apix", &[]).await;
    assert_eq!(status, 404, "a PathPrefix is whole path elements");

    // Finding 3: one header each, the earlier rule (the A/B one) wins.
    for _ in 0..10 {
        let (status, body) = w
            .request(
                "ab.example.com",
                "/",
                &[("x-canary", "always"), ("x-team", "a")],
            )
            .await;
        assert_eq!((status, body.as_str()), (200, "canary"));
    }
    let (status, body) = w.request("ab.example.com", "/", &[("x-team", "a")]).await;
    assert_eq!((status, body.as_str()), (200, "team"));
    let counts = w.counts(100, "ab.example.com", "/").await;
    assert_eq!(counts.get("canary"), Some(&10), "{counts:?}");
    let m = scrape(w.admin).await;
    let count = |backend: &str, decision: &str| {
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "default/ab/0"),
                ("backend", backend),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(count("canary", "match"), 10.0);
    assert_eq!(count("canary", "weight"), 10.0);
    assert_eq!(count("stable", "weight"), 90.0);

    // Finding 2: both listeners' hostnames served, both parents accepted.
    for host in ["foo.test", "bar.test"] {
        let (status, body) = w.request(host, "/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "a"), "{host}");
    }
    let both = w.get("httproute/both");
    let parents = both["status"]["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 2, "{both}");
    for parent in parents {
        assert_eq!(parent["conditions"][0]["status"], "True", "{parent}");
    }
    let multi = w.get("gateway/multi");
    assert_eq!(
        multi["status"]["listeners"][0]["attachedRoutes"], 1,
        "{multi}"
    );
    assert_eq!(
        multi["status"]["listeners"][1]["attachedRoutes"], 1,
        "{multi}"
    );

    // Finding 6: r1 keeps `/`, r2 is served with `/special`.
    assert_eq!(
        w.request("tie.example.com", "/x", &[]).await,
        (200, "a".to_string())
    );
    assert_eq!(
        w.request("tie.example.com", "/special/x", &[]).await,
        (200, "b".to_string())
    );
    let r2 = w.get("httproute/r2");
    assert!(
        r2["status"]
            .to_string()
            .contains("1 of its matches are also an older route's"),
        "{r2}"
    );

    // Finding 7: the valid rule served, the invalid one answered 500.
    assert_eq!(
        w.request("partial.example.com", "/", &[]).await,
        (200, "a".to_string())
    );
    assert_eq!(
        w.request("partial.example.com", "/v2/x", &[]).await,
        (500, String::new())
    );
    let conds = w.route_conditions("partial").expect("status");
    assert_eq!(conds["ResolvedRefs"].0, "False", "{conds:?}");
    assert_eq!(conds["ResolvedRefs"].1, "BackendNotFound", "{conds:?}");
}

/// The shipped install (`kubectl apply -k deploy/gateway`) goes onto a
/// cluster with the Gateway API CRDs as a user would apply it: kubectl's
/// default validation, so every field of every object (the GatewayClass
/// against its CRD's schema, the rest against Kubernetes 1.35) is checked
/// strictly by the API server, and the GatewayClass names the controller
/// `sluice-proxy --gateway-api` serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_gateway_install_applies_with_default_validation() {
    let w = World::start().await;
    w.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: sluice-system}\n");
    let dir = workspace_root().join("deploy/gateway");
    let (ok, out, err) = w.kubectl(&["apply", "-k", &dir.display().to_string()]);
    assert!(ok, "kubectl apply -k deploy/gateway failed: {err}\n{out}");
    assert!(
        !err.contains("Warning"),
        "the API server warned about the shipped objects: {err}"
    );
    let classes = w.get("gatewayclasses");
    let names: Vec<_> = classes["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| {
            (
                c["metadata"]["name"].as_str().unwrap_or("").to_string(),
                c["spec"]["controllerName"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert!(
        names.iter().any(|(_, c)| c == "sluice.dev/gateway"),
        "no GatewayClass for sluice.dev/gateway in deploy/gateway: {names:?}"
    );
    let (ok, out, err) = w.kubectl(&["get", "deployments", "-n", "sluice-system", "-o", "json"]);
    assert!(ok, "kubectl get deployments: {err}");
    let deployments: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        deployments["items"].as_array().map(Vec::len),
        Some(1),
        "deploy/gateway ships one proxy Deployment: {deployments}"
    );
}

/// An HTTPRoute with an `Exact` path and a method, two header matches, a
/// query-parameter match, a `PathPrefix` (whole path elements) and both
/// header modifiers, applied with kubectl: every request reaches the
/// backend the route names, the backend sees the modified request fields
/// and the client the modified answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matches_and_header_modifiers_are_served_as_written() {
    let mut w = World::start().await;
    let login = named_backend("login").await;
    let beta = named_backend("beta").await;
    let v2 = named_backend("v2").await;
    let api = header_echo_backend("api").await;
    let web = named_backend("web").await;
    let mut yaml = w.gateway();
    for (name, port) in [
        ("login", login),
        ("beta", beta),
        ("v2", v2),
        ("api", api),
        ("web", web),
    ] {
        yaml += &w.service(name, port);
    }
    yaml += &http_route(
        "shop",
        &format!(
            "  - matches: [{{path: {{type: Exact, value: /login}}, method: POST}}]
    backendRefs: [{{name: login, port: {login}}}]
  - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-env, value: beta}}, {{name: X-Team, value: a}}]}}]
    backendRefs: [{{name: beta, port: {beta}}}]
  - matches: [{{path: {{type: PathPrefix, value: /api}}, queryParams: [{{name: v, value: '2'}}]}}]
    backendRefs: [{{name: v2, port: {v2}}}]
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{{name: x-env, value: prod}}]
        add: [{{name: x-added, value: 'yes'}}]
        remove: [x-debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: x-served-by, value: sluice}}]
        remove: [x-internal]
    backendRefs: [{{name: api, port: {api}}}]
  - backendRefs: [{{name: web, port: {web}}}]
"
        ),
    );
    w.apply(&yaml);
    w.start_proxy().await;
    let conds = eventually(
        "HTTPRoute shop accepted",
        Duration::from_secs(20),
        || async {
            w.route_conditions("shop")
                .filter(|c| c.contains_key("Accepted"))
        },
    )
    .await;
    assert_eq!(
        conds["Accepted"].0,
        "True",
        "{}",
        w.get("httproute/shop")["status"]
    );
    assert_eq!(conds["ResolvedRefs"].0, "True", "{conds:?}");

    let host = "shop.example.com";
    let backend = |r: (u16, http::HeaderMap, String)| {
        assert_eq!(r.0, 200, "{}", r.2);
        match serde_json::from_str::<Value>(&r.2) {
            Ok(v) => v["backend"].as_str().unwrap_or("?").to_string(),
            Err(_) => r.2,
        }
    };
    // Exact path and method.
    assert_eq!(
        backend(w.exchange("POST", host, "/login", &[]).await),
        "login"
    );
    assert_eq!(backend(w.exchange("GET", host, "/login", &[]).await), "web");
    assert_eq!(
        backend(w.exchange("POST", host, "/login/x", &[]).await),
        "web"
    );
    // Both header matches are needed (names in any case).
    let both = [("X-Env", "beta"), ("x-team", "a")];
    assert_eq!(
        backend(w.exchange("GET", host, "/api/x", &both).await),
        "beta"
    );
    assert_eq!(
        backend(w.exchange("GET", host, "/api/x", &both[..1]).await),
        "api"
    );
    assert_eq!(
        backend(
            w.exchange("GET", host, "/api/x", &[("x-env", "beta"), ("x-team", "b")])
                .await
        ),
        "api"
    );
    // The query parameter (the first occurrence).
    assert_eq!(
        backend(w.exchange("GET", host, "/api/x?v=2", &[]).await),
        "v2"
    );
    assert_eq!(
        backend(w.exchange("GET", host, "/api?a=1&v=2", &[]).await),
        "v2"
    );
    assert_eq!(
        backend(w.exchange("GET", host, "/api/x?v=3&v=2", &[]).await),
        "api"
    );
    // PathPrefix /api matches whole path elements: /api and /api/..., not /apix.
    assert_eq!(backend(w.exchange("GET", host, "/api", &[]).await), "api");
    assert_eq!(backend(w.exchange("GET", host, "/apix", &[]).await), "web");

    // The modifiers: what the backend got, and what the client gets.
    let (status, answer, body) = w
        .exchange(
            "GET",
            host,
            "/api/users",
            &[("x-env", "dev"), ("x-debug", "1"), ("x-added", "client")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).expect("the api backend's JSON");
    assert_eq!(seen["backend"], "api");
    assert_eq!(
        seen["headers"]["x-env"],
        serde_json::json!(["prod"]),
        "{seen}"
    );
    assert_eq!(
        seen["headers"]["x-added"],
        serde_json::json!(["client", "yes"]),
        "{seen}"
    );
    assert!(seen["headers"].get("x-debug").is_none(), "{seen}");
    assert_eq!(seen["headers"]["host"], serde_json::json!([host]), "{seen}");
    assert_eq!(
        answer.get("x-served-by").map(|v| v.as_bytes()),
        Some(&b"sluice"[..])
    );
    assert!(answer.get("x-internal").is_none(), "{answer:?}");
    assert_eq!(
        answer.get("x-kept").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );

    // Every rule is its own route label.
    let (_, _, metrics) = get(&format!("http://{}/metrics", w.admin))
        .await
        .expect("metrics");
    let m = Scrape::parse(&String::from_utf8_lossy(&metrics));
    for (rule, calls) in [(0, 1.0), (1, 1.0), (2, 2.0), (3, 5.0), (4, 3.0)] {
        assert_eq!(
            m.sum(
                "sluice_requests_total",
                &[("route", &format!("default/shop/{rule}"))]
            ),
            calls,
            "rule {rule}"
        );
    }
}

/// A grpcio helper: `serve NAME...` starts one grpcio server per name
/// (service `test.Echo`, methods `Who` and `Tagged`, each answering
/// `{"backend": NAME, "metadata": {...}}` with the request metadata it
/// got and answer metadata `x-internal: secret`), prints `{NAME: PORT}`
/// and serves until its stdin closes; `call PORT AUTHORITY METHOD N
/// [KEY=VALUE...]` makes N unary calls through the proxy and prints each
/// answer with the answer metadata the client got.
const GRPC_HELPER: &str = r#"
import json, sys
from concurrent import futures
import grpc

def serve(names):
    servers, ports = [], {}
    for name in names:
        def answer(req, ctx, name=name):
            md = {k: v for k, v in ctx.invocation_metadata() if isinstance(v, str)}
            ctx.send_initial_metadata((("x-internal", "secret"),))
            return json.dumps({"backend": name, "metadata": md}).encode()
        h = grpc.method_handlers_generic_handler("test.Echo", {
            "Who": grpc.unary_unary_rpc_method_handler(answer),
            "Tagged": grpc.unary_unary_rpc_method_handler(answer),
        })
        s = grpc.server(futures.ThreadPoolExecutor(4))
        s.add_generic_rpc_handlers((h,))
        ports[name] = s.add_insecure_port("127.0.0.1:0")
        s.start()
        servers.append(s)
    print(json.dumps(ports), flush=True)
    sys.stdin.read()
    for s in servers:
        s.stop(0)

def call(port, authority, method, n, pairs):
    metadata = tuple(tuple(p.split("=", 1)) for p in pairs)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=(("grpc.default_authority", authority),))
    out = []
    for _ in range(n):
        reply, c = channel.unary_unary(method).with_call(b"", timeout=10, metadata=metadata)
        got = json.loads(reply)
        got["answer"] = {k: v for k, v in c.initial_metadata() if isinstance(v, str)}
        out.append(got)
    channel.close()
    print(json.dumps(out))

if sys.argv[1] == "serve":
    serve(sys.argv[2:])
else:
    call(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:])
"#;

fn python() -> PathBuf {
    let python = workspace_root().join("target/py-venv/bin/python");
    assert!(
        python.is_file()
            && Command::new(&python)
                .args(["-c", "import grpc"])
                .status()
                .is_ok_and(|s| s.success()),
        "grpcio is missing: tests/run installs it (python3 -m venv target/py-venv && target/py-venv/bin/pip install grpcio)"
    );
    python
}

/// Real grpcio servers, one per name, stopped on drop.
struct GrpcServers {
    child: Child,
    ports: BTreeMap<String, u16>,
}

impl GrpcServers {
    fn start(names: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(python())
            .args(["-c", GRPC_HELPER, "serve"])
            .args(names)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the grpcio servers");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the servers' ports");
        let ports = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the grpcio servers printed {line:?}: {e}"));
        Self { child, ports }
    }
}

impl Drop for GrpcServers {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` unary calls of `method` through the proxy with `metadata`: each
/// answer (`backend`, the `metadata` the server got, the `answer`
/// metadata the client got).
fn grpc_calls(port: u16, authority: &str, method: &str, n: usize, metadata: &[&str]) -> Vec<Value> {
    let out = output_within(
        Command::new(python())
            .args([
                "-c",
                GRPC_HELPER,
                "call",
                &port.to_string(),
                authority,
                method,
                &n.to_string(),
            ])
            .args(metadata),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "grpcio calls of {method} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the calls' JSON")
}

fn by_backend(answers: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts
            .entry(a["backend"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    counts
}

/// A GRPCRoute applied with kubectl, served to real grpcio servers by a
/// real proxy: its weights split exactly, a header rule to the canary is
/// an A/B rule, a method match with a header modifier reaches its
/// backend with the modified metadata, an HTTPRoute on the same hostname
/// is served beside it, and the statuses say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcroutes_are_served_to_grpc_backends_with_weights_and_a_header_ab_rule() {
    let mut w = World::start().await;
    let grpc = GrpcServers::start(&["stable", "canary"]);
    let (stable, canary) = (grpc.ports["stable"], grpc.ports["canary"]);
    let web = named_backend("web").await;
    let mut yaml = w.gateway();
    yaml += &w.service("grpc-stable", stable);
    yaml += &w.service("grpc-canary", canary);
    yaml += &w.service("web", web);
    yaml += &format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [grpc.example.com]
  rules:
  - matches: [{{method: {{service: test.Echo}}}}]
    backendRefs:
    - {{name: grpc-stable, port: {stable}, weight: 80}}
    - {{name: grpc-canary, port: {canary}, weight: 20}}
  - matches: [{{method: {{service: test.Echo}}, headers: [{{name: x-canary, value: always}}]}}]
    backendRefs: [{{name: grpc-canary, port: {canary}}}]
  - matches: [{{method: {{service: test.Echo, method: Tagged}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-tag, value: gateway}}]}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{remove: [x-internal]}}
    backendRefs: [{{name: grpc-stable, port: {stable}}}]
---
"
    );
    yaml += &http_route(
        "grpc",
        &format!("  - backendRefs: [{{name: web, port: {web}}}]\n"),
    );
    w.apply(&yaml);
    w.start_proxy().await;

    let conds = eventually(
        "GRPCRoute echo accepted",
        Duration::from_secs(20),
        || async {
            w.conditions("grpcroute/echo")
                .filter(|c| c.contains_key("Accepted"))
        },
    )
    .await;
    assert_eq!(
        conds["Accepted"],
        ("True".to_string(), "Accepted".to_string(), 1),
        "{}",
        w.get("grpcroute/echo")["status"]
    );
    assert_eq!(conds["ResolvedRefs"].0, "True", "{conds:?}");
    // The HTTPRoute on the GRPCRoute's hostname: the GRPCRoute spec
    // accepts only the older of the two (created in the same second here,
    // so `default/echo` before `default/grpc`).
    let conds = eventually(
        "HTTPRoute grpc refused",
        Duration::from_secs(20),
        || async {
            w.route_conditions("grpc")
                .filter(|c| c.contains_key("Accepted"))
        },
    )
    .await;
    assert_eq!(conds["Accepted"].0, "False", "{conds:?}");
    assert_eq!(conds["Accepted"].1, "Conflicted", "{conds:?}");
    assert!(
        w.get("httproute/grpc")["status"]
            .to_string()
            .contains("the GRPCRoute default/echo is older"),
        "{}",
        w.get("httproute/grpc")["status"]
    );

    // Exact weights over 100 calls.
    let answers = grpc_calls(w.port, "grpc.example.com", "/test.Echo/Who", 100, &[]);
    let counts = by_backend(&answers);
    assert_eq!(counts.get("stable"), Some(&80), "{counts:?}");
    assert_eq!(counts.get("canary"), Some(&20), "{counts:?}");
    // The header A/B rule: always the canary.
    let answers = grpc_calls(
        w.port,
        "grpc.example.com",
        "/test.Echo/Who",
        10,
        &["x-canary=always"],
    );
    assert_eq!(by_backend(&answers).get("canary"), Some(&10), "{answers:?}");
    // The method match with its modifiers.
    let answers = grpc_calls(w.port, "grpc.example.com", "/test.Echo/Tagged", 3, &[]);
    for a in &answers {
        assert_eq!(a["backend"], "stable", "{a}");
        assert_eq!(a["metadata"]["x-tag"], "gateway", "{a}");
        assert!(a["answer"].get("x-internal").is_none(), "{a}");
    }
    let answers = grpc_calls(
        w.port,
        "grpc.example.com",
        "/test.Echo/Who",
        1,
        &["x-canary=always"],
    );
    assert!(answers[0]["metadata"].get("x-tag").is_none(), "{answers:?}");
    assert_eq!(answers[0]["answer"]["x-internal"], "secret", "{answers:?}");
    // The refused HTTPRoute is not served: `/` is no gRPC method.
    let (status, _) = w.request("grpc.example.com", "/", &[]).await;
    assert_eq!(status, 404);

    // Metrics: the A/B calls are `decision="match"` on the weighted rule's route.
    let (_, _, metrics) = get(&format!("http://{}/metrics", w.admin))
        .await
        .expect("metrics");
    let m = Scrape::parse(&String::from_utf8_lossy(&metrics));
    let count = |backend: &str, decision: &str| {
        m.sum(
            "sluice_requests_total",
            &[
                ("route", "grpc:default/echo/0"),
                ("backend", backend),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(count("stable", "weight"), 80.0);
    assert_eq!(count("canary", "weight"), 20.0);
    assert_eq!(count("canary", "match"), 11.0);
    assert_eq!(
        m.sum("sluice_requests_total", &[("route", "grpc:default/echo/2")]),
        3.0
    );

    // The Gateway counts the served route on its listener, and is programmed.
    let gw = w.get("gateway/web");
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 1, "{gw}");
    let kinds = gw["status"]["listeners"][0]["supportedKinds"].to_string();
    assert!(
        kinds.contains("GRPCRoute") && kinds.contains("HTTPRoute"),
        "{kinds}"
    );
    let programmed = gw["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Programmed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(programmed["status"], "True", "{gw}");

    // A method match without a service is refused in status, never half served.
    w.apply(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: bad, namespace: default}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [bad.example.com]
  rules:
  - backendRefs: [{{name: grpc-stable, port: {stable}}}]
  - matches: [{{method: {{method: Who}}}}]
    backendRefs: [{{name: grpc-canary, port: {canary}}}]
"
    ));
    let conds = eventually("GRPCRoute bad refused", Duration::from_secs(20), || async {
        w.conditions("grpcroute/bad")
            .filter(|c| c.contains_key("Accepted"))
    })
    .await;
    assert_eq!(conds["Accepted"].0, "False", "{conds:?}");
    assert_eq!(conds["Accepted"].1, "UnsupportedValue", "{conds:?}");
    assert!(
        w.get("grpcroute/bad")["status"]
            .to_string()
            .contains("spec.rules[1].matches[0].method: a method match without a service"),
        "{}",
        w.get("grpcroute/bad")["status"]
    );

    // The API server itself refuses a method match that names nothing, or
    // a service that is not a protobuf name (the CRD's CEL rules).
    for (method, says) in [
        (
            "{type: Exact}",
            "One or both of 'service' or 'method' must be specified",
        ),
        (
            "{service: 'shop cart'}",
            "service must only contain valid characters",
        ),
    ] {
        let path = w.dir.path.join("invalid.yaml");
        std::fs::write(
            &path,
            format!("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: invalid, namespace: default}}\nspec:\n  rules:\n  - matches: [{{method: {method}}}]\n    backendRefs: [{{name: grpc-stable, port: {stable}}}]\n"),
        )
        .expect("write manifest");
        let (ok, _, err) = w.kubectl(&["apply", "-f", &path.display().to_string()]);
        assert!(!ok && err.contains(says), "{method}: {err}");
    }
}

/// On a cluster whose Gateway API CRDs predate GRPCRoute, the proxy
/// starts and serves HTTPRoutes (it reads GRPCRoutes only when the API
/// server serves them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grpcroute_crd_httproutes_are_still_served() {
    let mut w = World::start().await;
    let (ok, _, err) = w.kubectl(&["delete", "crd", "grpcroutes.gateway.networking.k8s.io"]);
    assert!(ok, "kubectl delete crd: {err}");
    let (ok, _, _) = w.kubectl(&["get", "grpcroutes"]);
    assert!(!ok, "grpcroutes are still served");
    let stable = named_backend("stable").await;
    let mut yaml = w.gateway();
    yaml += &w.service("stable", stable);
    yaml += &http_route(
        "old",
        &format!("  - backendRefs: [{{name: stable, port: {stable}}}]\n"),
    );
    w.apply(&yaml);
    w.start_proxy().await;
    eventually("route old served", Duration::from_secs(20), || async {
        (w.request("old.example.com", "/", &[]).await == (200, "stable".to_string())).then_some(())
    })
    .await;
    eventually(
        "HTTPRoute old accepted",
        Duration::from_secs(20),
        || async {
            w.route_conditions("old")
                .filter(|c| c.get("Accepted").is_some_and(|a| a.0 == "True"))
        },
    )
    .await;
}
