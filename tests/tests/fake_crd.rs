//! The fake API server's CustomResourceDefinitions, through the real
//! `kubectl` (default validation on) and `kube::Client` with
//! `DynamicObject`s: the Gateway API subset Sluice uses
//! ([`sluice_tests::gateway_crds`]) and a small unrelated CRD for the edge
//! cases (structural schemas, preserve-unknown-fields, transition rules,
//! the scale subresource, removing a served version).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use sluice_tests::fake_kube::kubectl::Kubectl;
use sluice_tests::fake_kube::{FakeKube, Options, User};
use sluice_tests::*;

const GW: &str = "apis/gateway.networking.k8s.io/v1";

struct Cluster {
    fake: FakeKube,
    dir: TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    async fn start() -> Self {
        let fake = FakeKube::start_with(Options {
            tls: true,
            ..Options::default()
        })
        .await;
        fake.create_namespace("shop");
        let dir = TempDir::new("fake-crd");
        let kubeconfig = dir.path.join("config");
        fake.kubeconfig(&kubeconfig);
        Self {
            fake,
            dir,
            kubeconfig,
        }
    }

    fn install_gateway_api(&self) {
        let crds = self.file("gateway-crds.yaml", &gateway_crds::yaml());
        let out = self.ok(&["apply", "-f", &crds]);
        for name in ["gatewayclasses", "gateways", "httproutes"] {
            assert!(
                out.contains(&format!(
                    "customresourcedefinition.apiextensions.k8s.io/{name}.gateway.networking.k8s.io created"
                )),
                "{out}"
            );
        }
    }
}

impl Kubectl for Cluster {
    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn dir(&self) -> &Path {
        &self.dir.path
    }
}

fn api(
    client: kube::Client,
    ns: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let group = if kind == "Widget" {
        "example.com"
    } else {
        gateway_crds::GROUP
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client, ns, &ar)
}

fn route(name: &str, backend_refs: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "hostnames": ["shop.example.com"],
            "rules": [{"backendRefs": backend_refs}],
        },
    })
}

fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("a DynamicObject")
}

fn kube_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("not an API error: {other}"),
    }
}

/// A CRD is checked (structural schema), established, and its resources
/// served: discovery with short names and categories, defaults filled, the
/// printer columns in `kubectl get`, `kubectl explain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_installs_gateway_api_crds_and_serves_their_resources() {
    let c = Cluster::start().await;
    c.install_gateway_api();
    let crd = c.json(&["crd", "httproutes.gateway.networking.k8s.io"]);
    let conditions: Vec<(String, String)> = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(conditions.contains(&("Established".into(), "True".into())));
    assert!(conditions.contains(&("NamesAccepted".into(), "True".into())));
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    assert_eq!(crd["spec"]["conversion"]["strategy"], "None");

    let resources = c.ok(&[
        "api-resources",
        "--api-group=gateway.networking.k8s.io",
        "-o",
        "wide",
    ]);
    let line = |name: &str| {
        resources
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {resources}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        line("gatewayclasses")
            .starts_with("gatewayclasses gc gateway.networking.k8s.io/v1 false GatewayClass"),
        "{resources}"
    );
    assert!(
        line("gateways").starts_with("gateways gtw gateway.networking.k8s.io/v1 true Gateway"),
        "{resources}"
    );
    assert!(line("httproutes").contains("gateway-api"), "{resources}");

    let manifests = c.file(
        "gateway.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: sluice
spec:
  controllerName: sluice.dev/gateway
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: default
spec:
  gatewayClassName: sluice
  listeners:
  - name: http
    port: 8080
    protocol: HTTP
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
  namespace: default
spec:
  parentRefs:
  - name: edge
  hostnames: [shop.example.com, www.example.com]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: x-canary, value: 'true'}]
      queryParams: [{name: v, value: '2'}]
      method: GET
    backendRefs:
    - {name: shop-canary, port: 80}
    timeouts: {request: 10s}
  - backendRefs:
    - {name: shop-primary, port: 80, weight: 90}
    - {name: shop-canary, port: 80, weight: 10}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-via, value: sluice}]
",
    );
    let out = c.ok(&["apply", "-f", &manifests]);
    assert!(
        out.contains("httproute.gateway.networking.k8s.io/shop created"),
        "{out}"
    );
    let shop = c.json(&["httproute", "shop"]);
    let rules = &shop["spec"]["rules"];
    // Defaults: weight 1, the header match's type, parentRef group/kind,
    // and a rule without matches gets the published default match.
    assert_eq!(rules[0]["backendRefs"][0]["weight"], 1);
    assert_eq!(rules[0]["backendRefs"][0]["kind"], "Service");
    assert_eq!(rules[0]["matches"][0]["headers"][0]["type"], "Exact");
    assert_eq!(rules[1]["backendRefs"][0]["weight"], 90);
    assert_eq!(
        rules[1]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/"}}])
    );
    assert_eq!(
        shop["spec"]["parentRefs"][0]["group"],
        "gateway.networking.k8s.io"
    );
    assert_eq!(shop["spec"]["parentRefs"][0]["kind"], "Gateway");
    assert_eq!(
        c.json(&["gateway", "edge"])["spec"]["listeners"][0]["allowedRoutes"],
        json!({"namespaces": {"from": "Same"}})
    );

    // Printer columns from additionalPrinterColumns.
    let table = c.ok(&["get", "httproutes"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "HOSTNAMES", "AGE"], "{table}");
    assert!(
        table.contains(r#"["shop.example.com","www.example.com"]"#),
        "{table}"
    );
    let classes = c.ok(&["get", "gc", "-o", "wide"]);
    let header: Vec<&str> = classes.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CONTROLLER", "ACCEPTED", "AGE", "DESCRIPTION"],
        "{classes}"
    );
    assert!(classes.contains("sluice.dev/gateway"), "{classes}");
    // A category lists every kind in it.
    let all = c.ok(&["get", "gateway-api", "-o", "name"]);
    for name in [
        "gateway.gateway.networking.k8s.io/edge",
        "httproute.gateway.networking.k8s.io/shop",
    ] {
        assert!(all.contains(name), "{all}");
    }

    // The OpenAPI document of the group-version: kubectl explain.
    let explain = c.ok(&["explain", "httproute.spec"]);
    assert!(explain.contains("KIND:       HTTPRoute"), "{explain}");
    for field in ["parentRefs", "hostnames", "rules"] {
        assert!(explain.contains(field), "{field} in {explain}");
    }
    let weight = c.ok(&["explain", "httproute.spec.rules.backendRefs.weight"]);
    assert!(weight.contains("FIELD: weight <integer>"), "{weight}");
}

/// Invalid objects are refused with the real 422 wording, by kubectl and
/// by a kube::Client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_gateway_api_objects_are_refused_with_the_real_wording() {
    let c = Cluster::start().await;
    c.install_gateway_api();
    let routes = api(c.fake.client(), "default", "v1", "HTTPRoute", "httproutes");
    let pp = PostParams::default();
    let refused = |v: Value| {
        let routes = routes.clone();
        let pp = pp.clone();
        async move { kube_error(routes.create(&pp, &dynamic(v)).await.expect_err("refused")) }
    };
    let (code, message) = refused(route(
        "heavy",
        json!([{"name": "a", "port": 80, "weight": 2000000}]),
    ))
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        message,
        "HTTPRoute.gateway.networking.k8s.io \"heavy\" is invalid: spec.rules[0].backendRefs[0].weight: Invalid value: 2000000: spec.rules[0].backendRefs[0].weight in body should be less than or equal to 1000000"
    );
    let (_, message) = refused(route("negative", json!([{"name": "a", "weight": -1}]))).await;
    assert!(
        message.ends_with("spec.rules[0].backendRefs[0].weight: Invalid value: -1: spec.rules[0].backendRefs[0].weight in body should be greater than or equal to 0"),
        "{message}"
    );
    let (_, message) = refused(route("portless", json!([{"port": 80}]))).await;
    assert!(
        message.ends_with("spec.rules[0].backendRefs[0].name: Required value"),
        "{message}"
    );
    let mut bad_filter = route("filtered", json!([{"name": "a"}]));
    bad_filter["spec"]["rules"][0]["filters"] = json!([{"type": "Rewrite"}]);
    let (_, message) = refused(bad_filter).await;
    assert!(
        message.ends_with(r#"spec.rules[0].filters[0].type: Unsupported value: "Rewrite": supported values: "RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "ExtensionRef""#),
        "{message}"
    );
    let mut bad_type = route("typed", json!([{"name": "a", "port": "eighty"}]));
    bad_type["spec"]["hostnames"] = json!(["Not_A_Host"]);
    let (_, message) = refused(bad_type).await;
    assert!(
        message.contains(r#"spec.rules[0].backendRefs[0].port: Invalid value: "string": spec.rules[0].backendRefs[0].port in body must be of type integer: "string""#),
        "{message}"
    );
    assert!(
        message.contains(r#"spec.hostnames[0]: Invalid value: "Not_A_Host": spec.hostnames[0] in body should match '^(\*\.)?[a-z0-9]"#),
        "{message}"
    );
    // A CEL rule of the schema: a path match must be absolute.
    let mut relative = route("relative", json!([{"name": "a"}]));
    relative["spec"]["rules"][0]["matches"] =
        json!([{"path": {"type": "PathPrefix", "value": "api"}}]);
    let (_, message) = refused(relative).await;
    assert!(
        message.ends_with(r#"spec.rules[0].matches[0].path: Invalid value: "object": value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"#),
        "{message}"
    );
    let mut many = route("many", json!([{"name": "a"}]));
    many["spec"]["hostnames"] = json!(
        (0..17)
            .map(|i| format!("h{i}.example.com"))
            .collect::<Vec<_>>()
    );
    let (_, message) = refused(many).await;
    assert!(
        message.ends_with("spec.hostnames: Too many: 17: must have at most 16 items"),
        "{message}"
    );
    // Through kubectl: the same 422, as kubectl prints it.
    let file = c.file(
        "heavy.json",
        &route(
            "heavy",
            json!([{"name": "a", "port": 80, "weight": 2000000}]),
        )
        .to_string(),
    );
    let err = c.refused(&["apply", "-f", &file]);
    assert!(
        err.contains(r#"The HTTPRoute "heavy" is invalid: spec.rules[0].backendRefs[0].weight: Invalid value: 2000000: spec.rules[0].backendRefs[0].weight in body should be less than or equal to 1000000"#),
        "{err}"
    );
    assert!(c.fake.names(GW, "httproutes", "default").is_empty());
}

/// Unknown fields: refused by kubectl's default validation (the server's
/// `fieldValidation=Strict`), pruned with `--validate=false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_under_strict_and_pruned_otherwise() {
    let c = Cluster::start().await;
    c.install_gateway_api();
    let mut r = route("extra", json!([{"name": "a", "port": 80, "color": "blue"}]));
    r["spec"]["owner"] = json!("team-a");
    let file = c.file("extra.json", &r.to_string());
    let err = c.refused(&["apply", "-f", &file]);
    assert!(err.contains("strict decoding error"), "{err}");
    assert!(err.contains(r#"unknown field "spec.owner""#), "{err}");
    assert!(
        err.contains(r#"unknown field "spec.rules[0].backendRefs[0].color""#),
        "{err}"
    );
    let (ok, _, err) = c.kubectl(&["apply", "--validate=false", "-f", &file]);
    assert!(ok, "{err}");
    let stored = c
        .fake
        .get(GW, "httproutes", "default", "extra")
        .expect("stored");
    assert!(stored["spec"].get("owner").is_none(), "{stored}");
    assert_eq!(
        stored["spec"]["rules"][0]["backendRefs"][0],
        json!({"name": "a", "port": 80, "weight": 1, "group": "", "kind": "Service"})
    );
}

/// The status subresource: writes to the object ignore status (and bump
/// the generation when the spec changes); status writes ignore the spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_subresource_splits_spec_and_status() {
    let c = Cluster::start().await;
    c.install_gateway_api();
    let routes = api(c.fake.client(), "default", "v1", "HTTPRoute", "httproutes");
    let mut r = route("web", json!([{"name": "a", "port": 80}]));
    r["status"] = json!({"parents": []});
    let created = routes
        .create(&PostParams::default(), &dynamic(r))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.data.get("status").is_none(), "{:?}", created.data);
    let status = json!({"status": {"parents": [{
        "parentRef": {"name": "edge"}, "controllerName": "sluice.dev/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    }]}, "spec": {"hostnames": ["ignored.example.com"]}});
    let after = routes
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(
        after.data["status"]["parents"][0]["conditions"][0]["type"],
        "Accepted"
    );
    assert_eq!(after.data["spec"]["hostnames"], json!(["shop.example.com"]));
    assert_eq!(after.metadata.generation, Some(1));
    // A bad status is refused by the schema too.
    let bad = json!({"status": {"parents": [{"parentRef": {"name": "edge"}, "controllerName": "x",
        "conditions": [{"type": "Accepted", "status": "Maybe", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}});
    let (code, message) = kube_error(
        routes
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&bad))
            .await
            .expect_err("refused"),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains(r#"status.parents[0].conditions[0].status: Unsupported value: "Maybe""#),
        "{message}"
    );
    let spec = json!({"spec": {"hostnames": ["new.example.com"]}, "status": {"parents": []}});
    let after = routes
        .patch("web", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(after.data["spec"]["hostnames"], json!(["new.example.com"]));
    assert_eq!(
        after.data["status"]["parents"][0]["controllerName"],
        "sluice.dev/gateway"
    );
    // A strategic merge patch is refused for custom resources.
    let (code, _) = kube_error(
        routes
            .patch("web", &PatchParams::default(), &Patch::Strategic(&spec))
            .await
            .expect_err("refused"),
    );
    assert_eq!(code, 415);
    // The served v1beta1 reads the same object in its version.
    let beta = api(
        c.fake.client(),
        "default",
        "v1beta1",
        "HTTPRoute",
        "httproutes",
    );
    let b = beta.get("web").await.unwrap();
    assert_eq!(
        b.types.as_ref().unwrap().api_version,
        "gateway.networking.k8s.io/v1beta1"
    );
    assert_eq!(b.data["spec"]["hostnames"], json!(["new.example.com"]));
}

/// Server-side apply with two field managers on `backendRefs`, an atomic
/// list in the published schema: the second manager conflicts on the
/// whole list, and takes it whole with force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_the_atomic_backend_refs_list_whole() {
    let c = Cluster::start().await;
    c.install_gateway_api();
    let routes = api(c.fake.client(), "default", "v1", "HTTPRoute", "httproutes");
    let gitops = route(
        "web",
        json!([{"name": "primary", "port": 80, "weight": 100}, {"name": "canary", "port": 80, "weight": 0}]),
    );
    routes
        .patch("web", &PatchParams::apply("gitops"), &Patch::Apply(&gitops))
        .await
        .unwrap();
    let mut sluice = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"rules": [{"backendRefs": [
            {"name": "primary", "port": 80, "weight": 90}, {"name": "canary", "port": 80, "weight": 10}]}]},
    });
    let (code, message) = kube_error(
        routes
            .patch("web", &PatchParams::apply("sluice"), &Patch::Apply(&sluice))
            .await
            .expect_err("a conflict"),
    );
    assert_eq!(code, 409);
    assert!(message.contains(r#"conflict with "gitops""#), "{message}");
    assert!(message.contains(".spec.rules"), "{message}");
    let forced = routes
        .patch(
            "web",
            &PatchParams::apply("sluice").force(),
            &Patch::Apply(&sluice),
        )
        .await
        .unwrap();
    let refs = &forced.data["spec"]["rules"][0]["backendRefs"];
    assert_eq!(
        (refs[0]["weight"].as_i64(), refs[1]["weight"].as_i64()),
        (Some(90), Some(10))
    );
    // The rules list is atomic too: sluice now owns it, gitops keeps the rest.
    let managers: Vec<(String, String)> = forced
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap(),
                serde_json::to_string(&m.fields_v1.as_ref().unwrap().0).unwrap(),
            )
        })
        .collect();
    let owned = |who: &str| managers.iter().find(|(m, _)| m == who).unwrap().1.clone();
    assert!(owned("sluice").contains("f:rules"), "{managers:?}");
    assert!(!owned("gitops").contains("f:rules"), "{managers:?}");
    assert!(owned("gitops").contains("f:hostnames"), "{managers:?}");
    // A weight out of range is refused, applied or not.
    sluice["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(1000001);
    let (code, _) = kube_error(
        routes
            .patch("web", &PatchParams::apply("sluice"), &Patch::Apply(&sluice))
            .await
            .expect_err("refused"),
    );
    assert_eq!(code, 422);
    // RBAC on the new resource: a user bound to read httproutes cannot patch.
    c.fake.put(
        "apis/rbac.authorization.k8s.io/v1",
        "roles",
        "default",
        json!({"metadata": {"name": "routes-reader", "namespace": "default"},
               "rules": [{"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["get", "list"]}]}),
    );
    c.fake.put(
        "apis/rbac.authorization.k8s.io/v1",
        "rolebindings",
        "default",
        json!({"metadata": {"name": "routes-reader", "namespace": "default"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "routes-reader"},
               "subjects": [{"kind": "User", "name": "reader", "apiGroup": "rbac.authorization.k8s.io"}]}),
    );
    let reader = User {
        name: "reader".into(),
        groups: vec!["system:authenticated".into()],
    };
    let as_reader = api(
        c.fake.client_as(reader),
        "default",
        "v1",
        "HTTPRoute",
        "httproutes",
    );
    assert!(as_reader.get("web").await.is_ok());
    let (code, message) = kube_error(
        as_reader
            .patch("web", &PatchParams::apply("reader"), &Patch::Apply(&sluice))
            .await
            .expect_err("forbidden"),
    );
    assert_eq!(code, 403);
    assert!(
        message.starts_with(r#"httproutes.gateway.networking.k8s.io "web" is forbidden: User "reader" cannot patch resource "httproutes" in API group "gateway.networking.k8s.io""#),
        "{message}"
    );
}

/// `kubectl get httproutes -w` streams every change; deleting the CRD
/// deletes its objects (the watch sees them go) and the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_routes_and_deleting_the_crd_removes_its_objects() {
    let c = Cluster::start().await;
    c.install_gateway_api();
    let mut watch = c
        .command(&[
            "get",
            "httproutes",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kubectl get -w");
    let mut stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for e in serde_json::Deserializer::from_reader(&mut stdout).into_iter::<Value>() {
            let Ok(e) = e else { return };
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a watch event within 10 s")
    };
    std::thread::sleep(Duration::from_millis(500));
    let file = c.file(
        "web.json",
        &route("web", json!([{"name": "a", "port": 80}])).to_string(),
    );
    c.ok(&["apply", "-f", &file]);
    c.ok(&[
        "patch",
        "httproute",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"hostnames":["b.example.com"]}}"#,
    ]);
    let seen: Vec<(String, Value)> = (0..2)
        .map(|_| {
            let e = next();
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["spec"]["hostnames"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ADDED".to_string(), json!(["shop.example.com"])),
            ("MODIFIED".to_string(), json!(["b.example.com"])),
        ]
    );
    let out = c.ok(&["delete", "crd", "httproutes.gateway.networking.k8s.io"]);
    assert!(out.contains("deleted"), "{out}");
    let gone = next();
    assert_eq!(gone["type"], "DELETED");
    assert_eq!(gone["object"]["metadata"]["name"], "web");
    assert!(c.fake.names(GW, "httproutes", "default").is_empty());
    let err = c.refused(&["get", "httproutes"]);
    // Which of the two depends on kubectl's discovery cache.
    assert!(
        err.contains(r#"the server doesn't have a resource type "httproutes""#)
            || err.contains("Error from server (NotFound)"),
        "{err}"
    );
    // The other kinds of the group are still served.
    c.ok(&["get", "gateways"]);
    let _ = watch.kill();
    let _ = watch.wait();
    drop(rx);
    reader.join().expect("watch reader");
}

const WIDGETS: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Size, type: string, jsonPath: .spec.size, priority: 1}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - {rule: 'self.size == oldSelf.size', message: size is immutable}
            properties:
              size: {type: string, enum: [S, M, L]}
              replicas: {type: integer, minimum: 0, default: 1}
              port: {x-kubernetes-int-or-string: true}
              tags: {type: array, items: {type: string, minLength: 2}, x-kubernetes-list-type: set}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
              note: {type: string, nullable: true, maxLength: 5}
          status:
            type: object
            properties:
              replicas: {type: integer}
  - name: v2
    served: false
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

/// The edge cases on a small CRD: a non-structural schema refused; int-or-
/// string, nullable, set lists, preserved unknown fields, a transition
/// rule, the scale subresource and a CRD update that removes a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_crd_covers_the_schema_edge_cases() {
    let c = Cluster::start().await;
    let nonstructural = WIDGETS.replace(
        "              size: {type: string, enum: [S, M, L]}",
        "              size: {enum: [S, M, L]}",
    );
    let err = c.refused(&["apply", "-f", &c.file("bad-crd.yaml", &nonstructural)]);
    assert!(
        err.contains(r#"The CustomResourceDefinition "widgets.example.com" is invalid: spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[size].type: Required value: must not be empty for specified object fields"#),
        "{err}"
    );
    let misnamed = WIDGETS.replace("name: widgets.example.com", "name: gadgets.example.com");
    let err = c.refused(&["apply", "-f", &c.file("misnamed.yaml", &misnamed)]);
    assert!(
        err.contains(r#"metadata.name: Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group"#),
        "{err}"
    );
    c.ok(&["apply", "-f", &c.file("widgets.yaml", WIDGETS)]);
    let resources = c.ok(&["api-resources", "--api-group=example.com"]);
    assert!(
        resources.contains("widgets") && resources.contains("wd"),
        "{resources}"
    );
    // v2 is not served.
    let err = c.refused(&["get", "widgets.v2.example.com"]);
    assert!(err.contains("doesn't have a resource type"), "{err}");

    let widgets = api(c.fake.client(), "default", "v1", "Widget", "widgets");
    let w = |spec: Value| {
        dynamic(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                       "metadata": {"name": "w", "namespace": "default"}, "spec": spec}))
    };
    let pp = PostParams::default();
    let (code, message) = kube_error(
        widgets
            .create(&pp, &w(json!({"size": "S", "port": true})))
            .await
            .expect_err("bad"),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains(r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#),
        "{message}"
    );
    let (_, message) = kube_error(
        widgets
            .create(&pp, &w(json!({"port": 80})))
            .await
            .expect_err("bad"),
    );
    assert!(message.ends_with("spec.size: Required value"), "{message}");
    let (_, message) = kube_error(
        widgets
            .create(
                &pp,
                &w(json!({"size": "S", "tags": ["ab", "ab"], "note": "toolong"})),
            )
            .await
            .expect_err("bad"),
    );
    assert!(
        message.contains(r#"spec.tags[1]: Duplicate value: "ab""#),
        "{message}"
    );
    assert!(
        message.contains("spec.note: Too long: may not be more than 5 bytes"),
        "{message}"
    );
    let created = widgets
        .create(
            &pp,
            &w(
                json!({"size": "S", "port": "http", "note": null, "tags": ["ab"],
                      "extra": {"anything": {"goes": [1, 2]}}, "unknown": 1}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["replicas"], 1);
    assert_eq!(
        created.data["spec"]["extra"],
        json!({"anything": {"goes": [1, 2]}})
    );
    assert!(created.data["spec"].get("unknown").is_none());
    assert_eq!(created.data["spec"]["note"], Value::Null);
    // The transition rule: size cannot change; other fields can.
    let (code, message) = kube_error(
        widgets
            .patch(
                "w",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"size": "L"}})),
            )
            .await
            .expect_err("immutable"),
    );
    assert_eq!(code, 422);
    assert!(
        message.ends_with(r#"spec: Invalid value: "object": size is immutable"#),
        "{message}"
    );
    // The scale subresource, through kubectl scale.
    let out = c.ok(&["scale", "widget/w", "--replicas=3"]);
    assert!(out.contains("widget.example.com/w scaled"), "{out}");
    let table = c.ok(&["get", "wd", "-o", "wide"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["w", "3", "S"], "{table}");
    let stored = c
        .fake
        .get("apis/example.com/v1", "widgets", "default", "w")
        .unwrap();
    assert_eq!(stored["metadata"]["generation"], 2);
    // A strategic merge patch from kubectl is refused as on a real server.
    let err = c.refused(&[
        "patch",
        "widget",
        "w",
        "--type",
        "strategic",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]);
    assert!(
        err.contains("UnsupportedMediaType") || err.contains("unknown format"),
        "{err}"
    );
    // Removing the storage version is refused while it is stored.
    let v2_only = WIDGETS.split("  - name: v1\n").next().unwrap().to_string()
        + "  - name: v2\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n";
    let err = c.refused(&["apply", "-f", &c.file("v2.yaml", &v2_only)]);
    assert!(
        err.contains(r#"status.storedVersions[0]: Invalid value: "v1": missing from spec.versions; v1 was previously a storage version"#),
        "{err}"
    );
    // Serving v2 as well: both versions list the object.
    // ... and a new default in v1: applied on read to the stored object.
    let both = WIDGETS.replace("    served: false\n", "    served: true\n").replace(
        "              size: {type: string, enum: [S, M, L]}\n",
        "              size: {type: string, enum: [S, M, L]}\n              color: {type: string, default: blue}\n",
    );
    c.ok(&["apply", "-f", &c.file("both.yaml", &both)]);
    let v2 = c.json(&["widgets.v2.example.com", "w"]);
    assert_eq!(v2["apiVersion"], "example.com/v2");
    assert_eq!(v2["spec"]["replicas"], 3);
    assert!(v2["spec"].get("color").is_none(), "{v2}");
    assert_eq!(c.json(&["widget", "w"])["spec"]["color"], "blue");
    let stored = c
        .fake
        .get("apis/example.com/v1", "widgets", "default", "w")
        .unwrap();
    assert!(stored["spec"].get("color").is_none(), "{stored}");
}

/// A CRD shaped like the Gateway API's `Gateway.spec.addresses` item:
/// `type` defaults to `IPAddress`, and a `oneOf` of value validations
/// (no `type` of their own, as structural schemas require there) says an
/// `IPAddress` value must be an IPv4 or IPv6 address, anything else is
/// free.
const ADDRESSES: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: listeners.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: listeners, singular: listener, kind: Listener, listKind: ListenerList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              addresses:
                type: array
                maxItems: 16
                items:
                  type: object
                  properties:
                    type: {type: string, default: IPAddress, maxLength: 253}
                    value: {type: string, maxLength: 253}
                  oneOf:
                  - properties:
                      type: {enum: [IPAddress]}
                      value:
                        anyOf:
                        - format: ipv4
                        - format: ipv6
                  - properties:
                      type:
                        not: {enum: [IPAddress]}
"#;

/// The upstream Gateway API CRDs use `oneOf`/`anyOf`/`not` value
/// validations whose schemas carry no `type`, which a real API server
/// requires (and a `type` there is refused); and it evaluates them on the
/// defaulted object, so an address that omits `type` is an `IPAddress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_value_validations_are_structural_and_run_after_defaulting() {
    let c = Cluster::start().await;
    let typed = ADDRESSES.replace(
        "                      type: {enum: [IPAddress]}",
        "                      type: {type: string, enum: [IPAddress]}",
    );
    let err = c.refused(&["apply", "-f", &c.file("typed.yaml", &typed)]);
    assert!(
        err.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[addresses].items.oneOf[0].properties[type].type: Forbidden: must be empty to be structural"),
        "{err}"
    );
    let incomplete = ADDRESSES.replace(
        "                        not: {enum: [IPAddress]}",
        "                        not: {enum: [IPAddress]}\n                      port: {minimum: 1}",
    );
    let err = c.refused(&["apply", "-f", &c.file("incomplete.yaml", &incomplete)]);
    assert!(
        err.contains("items.properties[port]: Required value: because it is defined in spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[addresses].items.oneOf[1].properties[port]"),
        "{err}"
    );
    c.ok(&["apply", "-f", &c.file("listeners.yaml", ADDRESSES)]);

    let listener = |name: &str, addresses: &str| {
        format!(
            "apiVersion: example.com/v1\nkind: Listener\nmetadata:\n  name: {name}\nspec:\n  addresses: {addresses}\n"
        )
    };
    let plain = listener("plain", r#"[{value: "10.0.0.1"}, {value: "fd00::1"}]"#);
    c.ok(&["apply", "-f", &c.file("plain.yaml", &plain)]);
    let stored = c.json(&["listener", "plain"]);
    assert_eq!(
        stored["spec"]["addresses"],
        json!([{"type": "IPAddress", "value": "10.0.0.1"}, {"type": "IPAddress", "value": "fd00::1"}]),
        "{stored}"
    );
    let named = listener("named", r#"[{type: Hostname, value: "gw.example.com"}]"#);
    c.ok(&["apply", "-f", &c.file("named.yaml", &named)]);
    let bad = listener("bad", r#"[{value: "10.0.0.1"}, {value: "gw.example.com"}]"#);
    let err = c.refused(&["apply", "-f", &c.file("bad.yaml", &bad)]);
    assert!(
        err.contains(r#"spec.addresses[1]: Invalid value: "object": spec.addresses[1] in body must validate one and only one schema (oneOf). Found none valid"#),
        "{err}"
    );
    assert!(!err.contains("spec.addresses[0]"), "{err}");
}
