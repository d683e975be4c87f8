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
        let route = self.get(&format!("httproute/{name}"));
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

    // The good route is served; neither refused route is served, not even half.
    eventually("route fine served", Duration::from_secs(20), || async {
        (w.request("fine.example.com", "/", &[]).await == (200, "canary".to_string())).then_some(())
    })
    .await;
    assert_eq!(w.request("rewrite.example.com", "/", &[]).await.0, 404);
    assert_eq!(w.request("rewrite.example.com", "/v2/x", &[]).await.0, 404);
    assert_eq!(w.request("missing.example.com", "/", &[]).await.0, 404);

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
        (w.request("missing.example.com", "/", &[("x", "y")]).await.0 != 404).then_some(())
    })
    .await;
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
