//! The fake API server against oracles that are not itself: the real
//! `kubectl` (its own strategic merge, computed client-side with
//! `kubectl patch --local`; and as a client of the `fake-apiserver` binary,
//! with results expected from the Kubernetes documentation), and the API's
//! documented status codes and Status bodies.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::fake_kube::kubectl::Kubectl;
use sluice_tests::fake_kube::{self, FakeKube, Options};
use sluice_tests::*;

const APPS: &str = "apis/apps/v1";
const OPERATOR: &str = "system:serviceaccount:sluice-system:sluice-operator";

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web", "team": "a"},
            "finalizers": ["f1", "f2"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o1", "uid": "u1"}]},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [
                    {"name": "a", "image": "a:1", "args": ["--x"],
                     "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
                     "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81, "protocol": "TCP"}],
                     "volumeMounts": [{"name": "v1", "mountPath": "/v1"}]},
                    {"name": "b", "image": "b:1"},
                ],
                "volumes": [{"name": "v1", "emptyDir": {}}, {"name": "v2", "configMap": {"name": "c"}}],
                "tolerations": [{"key": "k", "operator": "Exists"}],
            }},
        },
    })
}

/// Hand-picked patches covering every directive, then seeded random ones.
fn patches() -> Vec<Value> {
    let mut out: Vec<Value> = vec![
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "c:1"}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "c:1"}, {"name": "a", "image": "a:2"}]}}}}),
        json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "a:3"}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "z", "image": "z:1"}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "E3", "value": "3"}, {"name": "E1", "$patch": "delete"}]}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 82}]}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["--y"]}]}}}}),
        json!({"spec": {"template": {"spec": {"volumes": [{"name": "v3", "secret": {"secretName": "s"}}]}}}}),
        json!({"spec": {"template": {"spec": {"volumes": [{"name": "v2", "$retainKeys": ["name", "emptyDir"], "emptyDir": {}}]}}}}),
        json!({"spec": {"template": {"spec": {"tolerations": [{"key": "other", "operator": "Exists"}]}}}}),
        json!({"spec": {"template": {"metadata": {"$patch": "delete"}}}}),
        json!({"spec": {"template": {"metadata": {"labels": {"$patch": "replace", "z": "1"}}}}}),
        json!({"metadata": {"labels": {"team": null, "tier": "front"}, "annotations": {"x": null, "y": "1"}}}),
        json!({"metadata": {"finalizers": ["f3"]}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        json!({"metadata": {"$setElementOrder/finalizers": ["f2", "f1"], "finalizers": ["f1"]}}),
        json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o2", "uid": "u2"}]}}),
        json!({"metadata": {"ownerReferences": [{"uid": "u1", "$patch": "delete"}]}}),
        json!({"spec": {"replicas": null, "strategy": {"type": "Recreate"}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "q", "image": "q:1", "env": [{"name": "X", "value": null}]}]}}}}),
        json!({"metadata": {"newmap": {"a": null, "b": "1"}}}),
    ];
    // Random patches: containers, env, ports and labels, with deletes.
    let mut rng = sluice_loadtest::Rng::new(0xfa4e);
    let mut pick = |n: u64| (rng.next_u64() % n) as usize;
    let names = ["a", "b", "c", "d"];
    for _ in 0..60 {
        let mut containers = Vec::new();
        for _ in 0..pick(3) + 1 {
            let name = names[pick(names.len() as u64)];
            let mut c = json!({"name": name});
            match pick(6) {
                0 => c["$patch"] = json!("delete"),
                1 => c["image"] = json!(format!("{name}:{}", pick(9))),
                2 => {
                    c["env"] =
                        json!([{"name": format!("E{}", pick(4)), "value": format!("{}", pick(9))}])
                }
                3 => c["env"] = json!([{"name": format!("E{}", pick(4)), "$patch": "delete"}]),
                4 => c["ports"] = json!([{"containerPort": 80 + pick(4)}]),
                _ => c["args"] = json!([format!("--v{}", pick(3))]),
            }
            containers.push(c);
        }
        let mut patch = json!({"spec": {"template": {"spec": {"containers": containers}}}});
        if pick(3) == 0 {
            patch["metadata"] = json!({"labels": {format!("l{}", pick(3)): if pick(2) == 0 { Value::Null } else { json!("v") }}});
        }
        if pick(4) == 0 {
            let order: Vec<Value> = names
                .iter()
                .rev()
                .take(pick(4) + 1)
                .map(|n| json!({"name": n}))
                .collect();
            patch["spec"]["template"]["spec"]["$setElementOrder/containers"] = json!(order);
        }
        out.push(patch);
    }
    out
}

/// What `kubectl patch --local --type strategic` makes of a patch, or its error.
fn kubectl_local_patch(file: &std::path::Path, patch: &Value) -> Result<Value, String> {
    let out = Command::new(kubectl())
        .args([
            "patch",
            "--local",
            "--type",
            "strategic",
            "-o",
            "json",
            "-f",
        ])
        .arg(file)
        .arg("-p")
        .arg(patch.to_string())
        .output()
        .expect("run kubectl");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn strategic_merge_patches_give_what_kubectl_computes() {
    let dir = TempDir::new("smp");
    let file = dir.path.join("deployment.json");
    let original = deployment();
    std::fs::write(&file, original.to_string()).unwrap();
    let schema = fake_kube::schema::Schema::get().kind("apps/v1", "Deployment");
    let mut compared = 0;
    let mut errors_agreed = 0;
    for patch in patches() {
        let ours = fake_kube::merge::strategic_merge(&original, &patch, schema);
        match (kubectl_local_patch(&file, &patch), ours) {
            (Ok(expected), Ok(got)) => {
                assert_eq!(got, expected, "patch {patch}");
                compared += 1;
            }
            (Err(_), Err(_)) => errors_agreed += 1,
            (Ok(expected), Err(e)) => {
                panic!("patch {patch}: we refused ({e}), kubectl gave {expected}")
            }
            (Err(e), Ok(got)) => panic!("patch {patch}: kubectl refused ({e}), we gave {got}"),
        }
    }
    assert!(compared >= 70, "only {compared} patches compared");
    assert!(errors_agreed <= 10, "{errors_agreed}");
}

// === kubectl as a client of the fake-apiserver binary ===

/// The `fake-apiserver` binary, with a kubeconfig for its admin. Pods
/// deleted gracefully go at once (`--termination-cap 0s`): these tests do
/// not look at terminating pods, except the one that starts its own.
struct ApiServer {
    child: Child,
    dir: TempDir,
    kubeconfig: PathBuf,
}

impl ApiServer {
    fn start(ready_after: &str) -> Self {
        let dir = TempDir::new("fake-apiserver");
        let kubeconfig = dir.path.join("kubeconfig");
        let mut child = Command::new(bin("fake-apiserver"))
            .args(["--listen", "127.0.0.1:0", "--ready-after", ready_after])
            .args(["--termination-cap", "0s"])
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fake-apiserver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read fake-apiserver's first line");
        if !line.starts_with("listening on 127.0.0.1:") {
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            panic!("fake-apiserver did not start: {line:?} {err}");
        }
        Self {
            child,
            dir,
            kubeconfig,
        }
    }
}

impl Kubectl for ApiServer {
    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn dir(&self) -> &Path {
        &self.dir.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example of "Declarative Management of Kubernetes Objects Using
/// Configuration Files": a field another writer set (`replicas`, by
/// `kubectl scale`) survives; a field removed from the file that the last
/// apply set (`minReadySeconds`) is cleared; a changed one is updated.
#[test]
fn kubectl_apply_merges_three_ways() {
    let api = ApiServer::start("100ms");
    let first = api.file(
        "deploy.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
spec:
  selector:
    matchLabels:
      app: nginx
  minReadySeconds: 5
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
",
    );
    assert!(api.ok(&["apply", "-f", &first]).contains("created"));
    let live = api.json(&["deployment", "nginx-deployment"]);
    let last = live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .expect("apply records the last-applied configuration");
    assert_eq!(
        serde_json::from_str::<Value>(last).unwrap()["spec"]["minReadySeconds"],
        5
    );
    // Defaulted by the API server, not in the file.
    assert_eq!(live["spec"]["replicas"], 1);
    assert_eq!(live["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(
        api.ok(&["scale", "deployment/nginx-deployment", "--replicas=2"])
            .contains("scaled")
    );
    let second = api.file(
        "deploy2.yaml",
        &std::fs::read_to_string(&first)
            .unwrap()
            .replace("  minReadySeconds: 5\n", "")
            .replace("nginx:1.14.2", "nginx:1.16.1"),
    );
    assert!(api.ok(&["apply", "-f", &second]).contains("configured"));
    let live = api.json(&["deployment", "nginx-deployment"]);
    assert_eq!(live["spec"]["replicas"], 2, "kept: set by kubectl scale");
    assert!(
        live["spec"].get("minReadySeconds").is_none(),
        "cleared: {}",
        live["spec"]
    );
    assert_eq!(
        live["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.16.1"
    );
    // The Deployment controller made the pods and reports them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = api.json(&["deployment", "nginx-deployment"]);
        let s = &live["status"];
        // Rolled out as `kubectl rollout status` reads it: the old pods
        // gone too (`replicas` counts every pod of every ReplicaSet).
        if s["readyReplicas"] == 2
            && s["updatedReplicas"] == 2
            && s["replicas"] == 2
            && s["observedGeneration"] == live["metadata"]["generation"]
        {
            break;
        }
        assert!(Instant::now() < deadline, "never rolled out: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pods = api.json(&["pods", "-l", "app=nginx"]);
    let images: Vec<&Value> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| &p["spec"]["containers"][0]["image"])
        .collect();
    assert_eq!(images, [&json!("nginx:1.16.1"), &json!("nginx:1.16.1")]);
}

/// Server-side apply as its documentation describes it: a manager that sets
/// a field another owns conflicts (409) unless it forces, which moves the
/// ownership; fields a manager stops applying are removed unless another
/// manager still owns them; a Service's selector is one atomic map.
#[test]
fn kubectl_server_side_apply_owns_fields_conflicts_and_removes() {
    let api = ApiServer::start("100ms");
    let apply = |manager: &str, data: &str, force: bool| {
        let file = api.file(
            &format!("cm-{manager}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata: {data}\n"
            ),
        );
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager",
            manager,
            "-f",
            &file,
        ];
        if force {
            args.push("--force-conflicts");
        }
        api.kubectl(&args)
    };
    let data = |api: &ApiServer| api.json(&["configmap", "settings"])["data"].clone();
    assert!(apply("alice", "{a: '1', b: '2'}", false).0);
    let (ok, _, err) = apply("bob", "{a: '9'}", false);
    assert!(!ok, "a changed field owned by alice must conflict");
    assert!(
        err.contains("Apply failed with 1 conflict")
            && err.contains("conflict with \"alice\"")
            && err.contains(".data.a"),
        "{err}"
    );
    assert_eq!(
        data(&api),
        json!({"a": "1", "b": "2"}),
        "a conflict changes nothing"
    );
    // The same value is shared ownership, not a conflict.
    assert!(apply("bob", "{b: '2'}", false).0);
    // Forcing takes the field.
    assert!(apply("bob", "{a: '9', b: '2'}", true).0);
    assert_eq!(data(&api), json!({"a": "9", "b": "2"}));
    let live = api.json(&["configmap", "settings", "--show-managed-fields"]);
    let owners = |field: &str| -> Vec<String> {
        live["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["operation"] == "Apply"
                    && m["fieldsV1"]["f:data"].get(format!("f:{field}")).is_some()
            })
            .map(|m| m["manager"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(owners("a"), ["bob"], "force moved a to bob");
    let mut b = owners("b");
    b.sort();
    assert_eq!(b, ["alice", "bob"]);
    // alice stops applying b: bob still owns it, so it stays; she adds c.
    assert!(apply("alice", "{c: '3'}", false).0);
    assert_eq!(data(&api), json!({"a": "9", "b": "2", "c": "3"}));
    // alice stops applying c, which only she owned: it is removed.
    assert!(apply("alice", "{d: '4'}", false).0);
    assert_eq!(data(&api), json!({"a": "9", "b": "2", "d": "4"}));

    // spec.selector of a Service is atomic: a different selector conflicts
    // as a whole, and a forced one replaces it rather than merging keys.
    let service = |manager: &str, selector: &str, force: bool| {
        let file = api.file(
            &format!("svc-{manager}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {selector}\n  ports:\n  - port: 80\n"
            ),
        );
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager",
            manager,
            "-f",
            &file,
        ];
        if force {
            args.push("--force-conflicts");
        }
        api.kubectl(&args)
    };
    assert!(service("alice", "{app: web, track: stable}", false).0);
    let (ok, _, err) = service("bob", "{app: web}", false);
    assert!(!ok && err.contains(".spec.selector"), "{err}");
    assert!(service("bob", "{app: web}", true).0);
    assert_eq!(
        api.json(&["service", "web"])["spec"]["selector"],
        json!({"app": "web"})
    );
}

/// "Update API Objects in Place Using kubectl patch": a strategic merge
/// patch merges containers by name and replaces lists without a patch
/// strategy (tolerations); a JSON merge patch replaces the whole list; a
/// JSON patch applies its operations, and a failed `test` changes nothing.
#[test]
fn kubectl_patch_strategic_merge_and_json() {
    let api = ApiServer::start("100ms");
    let file = api.file(
        "patch-demo.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: patch-demo
spec:
  replicas: 2
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: patch-demo-ctr
        image: nginx
      tolerations:
      - effect: NoSchedule
        key: dedicated
        value: test-team
",
    );
    api.ok(&["apply", "-f", &file]);
    let containers = |api: &ApiServer| -> Vec<String> {
        api.json(&["deployment", "patch-demo"])["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}={}",
                    c["name"].as_str().unwrap(),
                    c["image"].as_str().unwrap()
                )
            })
            .collect()
    };
    api.ok(&["patch", "deployment", "patch-demo", "--patch",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"patch-demo-ctr-2","image":"redis"}]}}}}"#]);
    assert_eq!(
        containers(&api),
        ["patch-demo-ctr-2=redis", "patch-demo-ctr=nginx"]
    );
    api.ok(&["patch", "deployment", "patch-demo", "--patch",
        r#"{"spec":{"template":{"spec":{"tolerations":[{"effect":"NoSchedule","key":"disktype","value":"ssd"}]}}}}"#]);
    let tolerations =
        api.json(&["deployment", "patch-demo"])["spec"]["template"]["spec"]["tolerations"].clone();
    assert_eq!(
        tolerations,
        json!([{"effect": "NoSchedule", "key": "disktype", "value": "ssd"}])
    );
    api.ok(&["patch", "deployment", "patch-demo", "--type", "merge", "--patch",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"patch-demo-ctr-3","image":"gcr.io/google-samples/hello-app:2.0"}]}}}}"#]);
    assert_eq!(
        containers(&api),
        ["patch-demo-ctr-3=gcr.io/google-samples/hello-app:2.0"]
    );
    api.ok(&["patch", "deployment", "patch-demo", "--type", "json", "--patch",
        r#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"add","path":"/metadata/labels","value":{"tier":"web"}}]"#]);
    let live = api.json(&["deployment", "patch-demo"]);
    assert_eq!(
        (
            live["spec"]["replicas"].clone(),
            live["metadata"]["labels"].clone()
        ),
        (json!(3), json!({"tier": "web"}))
    );
    let (ok, _, err) = api.kubectl(&["patch", "deployment", "patch-demo", "--type", "json", "--patch",
        r#"[{"op":"replace","path":"/spec/replicas","value":5},{"op":"test","path":"/spec/replicas","value":4}]"#]);
    assert!(!ok, "a failed test operation must fail the patch");
    // A 422 without causes: kubectl says "The request is invalid".
    assert!(
        err.contains("The request is invalid") && err.contains("test failed"),
        "{err}"
    );
    assert_eq!(
        api.json(&["deployment", "patch-demo"])["spec"]["replicas"],
        3,
        "nothing applied"
    );
    // A patch that breaks validation is refused whole, with the field named.
    let (ok, _, err) = api.kubectl(&[
        "patch",
        "deployment",
        "patch-demo",
        "--type",
        "merge",
        "--patch",
        r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#,
    ]);
    assert!(
        !ok && err.contains("spec.selector") && err.contains("field is immutable"),
        "{err}"
    );
}

/// `kubectl get -w --output-watch-events`: the existing objects as ADDED,
/// then every change in order.
#[test]
fn kubectl_get_watch_streams_every_change_in_order() {
    let api = ApiServer::start("100ms");
    let cm = |name: &str, value: &str| {
        api.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: '{value}'\n"),
        )
    };
    api.ok(&["create", "-f", &cm("before", "0")]);
    let mut watch = api
        .command(&[
            "get",
            "configmaps",
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
        let events = serde_json::Deserializer::from_reader(&mut stdout).into_iter::<Value>();
        for e in events {
            match e {
                Ok(e) => {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a watch event within 10 s")
    };
    let first = next();
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("before"))
    );
    api.ok(&["create", "-f", &cm("during", "1")]);
    api.ok(&[
        "patch",
        "configmap",
        "during",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"v":"2"}}"#,
    ]);
    api.ok(&["delete", "configmap", "during"]);
    let seen: Vec<(String, String)> = (0..3)
        .map(|_| {
            let e = next();
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["data"]["v"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ADDED".into(), "1".into()),
            ("MODIFIED".into(), "2".into()),
            ("DELETED".into(), "2".into())
        ]
    );
    let _ = watch.kill();
    let _ = watch.wait();
    drop(rx);
    reader.join().expect("watch reader");
}

/// `kubectl delete`: by default the garbage collector removes dependents in
/// the background; `--cascade=orphan` leaves them without their owner
/// reference; `--cascade=foreground` deletes dependents before the owner.
#[test]
fn kubectl_delete_cascades_orphans_and_foreground() {
    let api = ApiServer::start("50ms");
    let deployment = |name: &str| {
        api.file(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - {{name: c, image: 'nginx:1'}}\n"
            ),
        )
    };
    let pods = |app: &str| -> Vec<Value> {
        api.json(&["pods", "-l", &format!("app={app}")])["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for name in ["background", "orphan", "foreground"] {
        api.ok(&["apply", "-f", &deployment(name)]);
        wait("two pods", &|| pods(name).len() == 2);
    }
    api.ok(&["delete", "deployment", "background"]);
    wait("dependents collected", &|| pods("background").is_empty());
    assert!(
        api.json(&["rs", "-l", "app=background"])["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the ReplicaSet went with its Deployment"
    );

    api.ok(&["delete", "deployment", "orphan", "--cascade=orphan"]);
    std::thread::sleep(Duration::from_millis(500));
    let left = pods("orphan");
    assert_eq!(left.len(), 2, "orphaned pods stay");
    // The ReplicaSet lost its owner and stays; its pods are still its own.
    let sets = api.json(&["rs", "-l", "app=orphan"]);
    let sets = sets["items"].as_array().unwrap();
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert!(
        sets[0]["metadata"].get("ownerReferences").is_none(),
        "{sets:?}"
    );
    assert!(
        left.iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["uid"] == sets[0]["metadata"]["uid"]),
        "{left:?}"
    );

    api.ok(&[
        "delete",
        "deployment",
        "foreground",
        "--cascade=foreground",
        "--wait=true",
        "--timeout=20s",
    ]);
    assert!(
        pods("foreground").is_empty(),
        "the owner went only after its dependents"
    );
    let (ok, _, err) = api.kubectl(&["get", "deployment", "foreground"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
}

/// kubectl's default validation against the fake as against a real server:
/// it reads `/openapi/v3`, finds that PATCH takes `fieldValidation`, and
/// leaves the check to the server (`fieldValidation=Strict`), whose strict
/// decoding refuses an unknown field with the real wording, on create and
/// on a patch of an existing object. `--validate=warn` applies and kubectl
/// prints the server's warning; `--validate=false` drops the field silently.
#[test]
fn kubectl_default_validation_is_the_servers_strict_decoding() {
    let api = ApiServer::start("50ms");
    let manifest = |name: &str, extra: &str| {
        api.file(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n{extra}  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - {{name: c, image: 'nginx:1'}}\n"
            ),
        )
    };
    let bad = manifest("strict", "  foo: bar\n");
    for verb in ["apply", "create"] {
        let (ok, _, err) = api.kubectl(&[verb, "-f", &bad]);
        assert!(!ok, "kubectl {verb} took an unknown field");
        assert!(
            err.contains(&format!(
                "Error from server (BadRequest): error when creating \"{bad}\": Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.foo\""
            )),
            "kubectl {verb}: {err}"
        );
    }
    let (ok, _, err) = api.kubectl(&["get", "deployment", "strict"]);
    assert!(
        !ok && err.contains("NotFound"),
        "nothing was created: {err}"
    );

    // A valid file applies with default validation; the same file with an
    // unknown field is refused as a patch too, and nothing changes.
    let good = manifest("strict", "");
    assert!(api.ok(&["apply", "-f", &good]).contains("created"));
    let bad2 = manifest("strict", "  foo: bar\n  minReadySeconds: 3\n");
    let (ok, _, err) = api.kubectl(&["apply", "-f", &bad2]);
    assert!(
        !ok && err.contains("Error from server (BadRequest)")
            && err.contains("strict decoding error: unknown field \"spec.foo\""),
        "{err}"
    );
    assert!(
        api.json(&["deployment", "strict"])["spec"]
            .get("minReadySeconds")
            .is_none()
    );

    // Warn: applied without the field, and kubectl prints the warning.
    let (ok, _, err) = api.kubectl(&["apply", "--validate=warn", "-f", &bad]);
    assert!(ok, "{err}");
    assert!(err.contains("Warning: unknown field \"spec.foo\""), "{err}");
    let warned = manifest("warned", "  foo: bar\n");
    let (ok, _, err) = api.kubectl(&["create", "--validate=warn", "-f", &warned]);
    assert!(
        ok && err.contains("Warning: unknown field \"spec.foo\""),
        "{err}"
    );
    assert!(
        api.json(&["deployment", "warned"])["spec"]
            .get("foo")
            .is_none()
    );

    // false: Ignore, no warning.
    let ignored = manifest("ignored", "  foo: bar\n");
    let (ok, _, err) = api.kubectl(&["apply", "--validate=false", "-f", &ignored]);
    assert!(ok && !err.contains("Warning"), "{err}");

    // kubectl explain reads the same documents.
    let explained = api.ok(&["explain", "deployment.spec"]);
    assert!(
        explained.contains("KIND:")
            && explained.contains("Deployment")
            && explained.contains("replicas\t<integer>")
            && explained.contains("template\t<PodTemplateSpec> -required-"),
        "{explained}"
    );
}

/// Namespaces as a cluster has them: the four system ones from the start
/// (not deletable), content only in a namespace that exists and is not
/// going away, and a deleted namespace takes its content with it.
/// `kubectl get all` lists the `all` category.
#[test]
fn namespaces_hold_their_content_and_go_with_it() {
    let api = ApiServer::start("100ms");
    let names = api.ok(&["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
        assert!(names.contains(&format!("namespace/{ns}")), "{names}");
    }
    let (gone, _, err) = api.kubectl(&["delete", "namespace", "default"]);
    assert!(
        !gone
            && err.contains(
                r#"namespaces "default" is forbidden: this namespace may not be deleted"#
            ),
        "{err}"
    );
    let (made, _, err) =
        api.kubectl(&["create", "deployment", "web", "--image=nginx", "-n", "lab"]);
    assert!(
        !made && err.contains(r#"namespaces "lab" not found"#),
        "{err}"
    );
    api.ok(&["create", "namespace", "lab"]);
    let label = api.ok(&[
        "get",
        "namespace",
        "lab",
        "-o",
        "jsonpath={.metadata.labels.kubernetes\\.io/metadata\\.name} {.status.phase}",
    ]);
    assert_eq!(label, "lab Active");
    api.ok(&["create", "deployment", "web", "--image=nginx", "-n", "lab"]);
    api.ok(&["expose", "deployment", "web", "--port", "80", "-n", "lab"]);
    api.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "lab",
        "--timeout=20s",
    ]);
    let all = api.ok(&["get", "all", "-n", "lab", "-o", "name"]);
    for kind in [
        "pod/web-",
        "service/web",
        "deployment.apps/web",
        "replicaset.apps/web-",
    ] {
        assert!(all.contains(kind), "kubectl get all lacks {kind}: {all}");
    }
    // A finalizer holds one object, and so the namespace, in Terminating.
    let finalizers = |list: &str| {
        let patch = format!(r#"{{"metadata":{{"finalizers":{list}}}}}"#);
        api.ok(&[
            "patch",
            "configmap",
            "held",
            "-n",
            "lab",
            "--type=merge",
            "-p",
            &patch,
        ]);
    };
    api.ok(&["create", "configmap", "held", "-n", "lab"]);
    finalizers(r#"["example.com/hold"]"#);
    api.ok(&["delete", "namespace", "lab", "--wait=false"]);
    let phase = api.ok(&["get", "namespace", "lab", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Terminating");
    let (made, _, err) = api.kubectl(&["create", "configmap", "late", "-n", "lab"]);
    assert!(
        !made
            && err.contains(
                "unable to create new content in namespace lab because it is being terminated"
            ),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = api.ok(&["get", "all,configmaps", "-n", "lab", "-o", "name"]);
        if left.trim() == "configmap/held" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the namespace's content stays: {left}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    finalizers("null");
    api.ok(&["wait", "--for=delete", "namespace/lab", "--timeout=10s"]);
    let (found, _, err) = api.kubectl(&["get", "namespace", "lab"]);
    assert!(!found && err.contains("NotFound"), "{err}");
}

/// `kubectl auth can-i --as` answers from the shipped RBAC (the operator's
/// ClusterRole and leader Role) and from a namespaced Role with
/// resourceNames; a forbidden request carries the API's message.
#[test]
fn kubectl_auth_can_i_follows_the_shipped_rbac() {
    let api = ApiServer::start("100ms");
    let can = |who: &str, args: &[&str]| -> String {
        let mut all = vec!["auth", "can-i", "--as", who];
        all.extend_from_slice(args);
        let (_, out, err) = api.kubectl(&all);
        assert!(
            out.trim() == "yes" || out.trim() == "no",
            "{all:?}: {out} {err}"
        );
        out.trim().to_string()
    };
    // Expected answers read off deploy/operator/rbac.yaml.
    for (args, expected) in [
        (vec!["patch", "deployments", "-n", "shop"], "yes"),
        (
            vec![
                "update",
                "deployments",
                "--subresource",
                "finalizers",
                "-n",
                "shop",
            ],
            "yes",
        ),
        (vec!["get", "secrets", "-n", "shop"], "yes"),
        (vec!["list", "pods", "-n", "shop"], "yes"),
        (vec!["delete", "pods", "-n", "shop"], "no"),
        (vec!["create", "events.events.k8s.io", "-n", "shop"], "yes"),
        (
            vec![
                "create",
                "leases.coordination.k8s.io",
                "-n",
                "sluice-system",
            ],
            "yes",
        ),
        (
            vec!["create", "leases.coordination.k8s.io", "-n", "shop"],
            "no",
        ),
        (
            vec!["escalate", "roles.rbac.authorization.k8s.io", "-n", "shop"],
            "no",
        ),
        (vec!["list", "secrets", "--all-namespaces"], "no"),
        (
            vec!["list", "endpointslices.discovery.k8s.io", "-n", "shop"],
            "yes",
        ),
        (
            vec![
                "update",
                "horizontalpodautoscalers.autoscaling",
                "-n",
                "shop",
            ],
            "no",
        ),
    ] {
        assert_eq!(can(OPERATOR, &args), expected, "operator: can-i {args:?}");
    }
    // Nothing can be made in a namespace that does not exist.
    let (made, _, err) = api.kubectl(&["create", "configmap", "early", "-n", "shop"]);
    assert!(
        !made && err.contains(r#"namespaces "shop" not found"#),
        "{err}"
    );
    api.ok(&["create", "namespace", "shop"]);
    let rbac = api.file(
        "proxy-rbac.yaml",
        "apiVersion: v1
kind: ServiceAccount
metadata: {name: web-sluice, namespace: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: web-sluice, namespace: shop}
rules:
- apiGroups: ['']
  resources: [configmaps]
  resourceNames: [web-sluice]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: web-sluice, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: web-sluice}
subjects:
- {kind: ServiceAccount, name: web-sluice, namespace: shop}
",
    );
    api.ok(&["apply", "-f", &rbac]);
    let proxy = "system:serviceaccount:shop:web-sluice";
    assert_eq!(
        can(proxy, &["get", "configmaps/web-sluice", "-n", "shop"]),
        "yes"
    );
    assert_eq!(can(proxy, &["get", "configmaps/other", "-n", "shop"]), "no");
    assert_eq!(
        can(proxy, &["list", "configmaps", "-n", "shop"]),
        "no",
        "resourceNames needs a name"
    );
    assert_eq!(
        can(proxy, &["get", "configmaps/web-sluice", "-n", "other"]),
        "no"
    );
    let (ok, _, err) = api.kubectl(&["--as", OPERATOR, "delete", "pod", "x", "-n", "shop"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "pods \"x\" is forbidden: User \"{OPERATOR}\" cannot delete resource \"pods\" in API group \"\" in the namespace \"shop\""
        )),
        "{err}"
    );
}

// === the wire: status codes, Status bodies, watches ===

/// One request to an in-process fake as its admin: (status, body, headers).
async fn call(
    fake: &FakeKube,
    method: &str,
    path: &str,
    content_type: &str,
    body: impl Into<bytes::Bytes>,
) -> (u16, Value, http::HeaderMap) {
    call_as(
        fake,
        fake_kube::ADMIN_TOKEN,
        method,
        path,
        content_type,
        body,
    )
    .await
}

/// One request with `token` as the caller's identity.
async fn call_as(
    fake: &FakeKube,
    token: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: impl Into<bytes::Bytes>,
) -> (u16, Value, http::HeaderMap) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", fake.addr))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(http_body_util::Full::new(body.into()))
        .expect("request");
    let (status, headers, body) = send(&h1_client(), req).await.expect("the fake answers");
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: the answer is not JSON ({e}): {body:?}"));
    (status.as_u16(), value, headers)
}

/// The API's `Status` body for a failure, checked field by field.
fn assert_status(body: &Value, code: u16, reason: &str) {
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

const CMS: &str = "/api/v1/namespaces/shop/configmaps";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments";

fn web_deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}],
            }},
        },
    })
}

#[tokio::test]
async fn bad_input_gets_the_api_status_codes_and_bodies() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    // Malformed JSON: 400.
    let (code, body, _) = call(
        &fake,
        "POST",
        CMS,
        "application/json",
        r#"{"metadata": {"name": "x""#,
    )
    .await;
    assert_eq!(code, 400);
    assert_status(&body, 400, "BadRequest");
    // A wrong type: 400 naming the field.
    let (code, body, _) = call(
        &fake,
        "POST",
        CMS,
        "application/json",
        r#"{"metadata": {"name": "x"}, "data": {"k": 5}}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("data"), "{body}");
    // Unknown field: refused under Strict, dropped with a Warning otherwise.
    let mut d = web_deployment("web");
    d["spec"]["foo"] = json!(1);
    let strict = format!("{DEPLOYMENTS}?fieldValidation=Strict");
    let (code, body, _) = call(&fake, "POST", &strict, "application/json", d.to_string()).await;
    assert_eq!(code, 400);
    assert_status(&body, 400, "BadRequest");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(r#"strict decoding error: unknown field "spec.foo""#),
        "{body}"
    );
    assert!(
        fake.get(APPS, "deployments", "shop", "web").is_none(),
        "nothing stored"
    );
    let (code, body, headers) = call(
        &fake,
        "POST",
        DEPLOYMENTS,
        "application/json",
        d.to_string(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let warning = headers
        .get("warning")
        .map(|w| w.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        warning.contains(r#"unknown field \"spec.foo\""#)
            || warning.contains(r#"unknown field "spec.foo""#),
        "{warning:?}"
    );
    assert!(body["spec"].get("foo").is_none(), "{body}");
    // Wrong content types: 415.
    let one = format!("{DEPLOYMENTS}/web");
    let (code, body, _) = call(&fake, "PATCH", &one, "text/plain", "{}").await;
    assert_eq!(code, 415);
    assert_status(&body, 415, "UnsupportedMediaType");
    let (code, body, _) = call(&fake, "POST", CMS, "application/merge-patch+json", "{}").await;
    assert_eq!(code, 415);
    assert_status(&body, 415, "UnsupportedMediaType");
    // Apply without a field manager: 400.
    let (code, body, _) = call(
        &fake,
        "PATCH",
        &one,
        "application/apply-patch+yaml",
        d.to_string(),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("fieldManager: Required value"),
        "{body}"
    );
    // Unknown resource and object: 404 with the API's wording.
    let (code, body, _) = call(&fake, "GET", &format!("{DEPLOYMENTS}/nope"), "", "").await;
    assert_eq!(code, 404);
    assert_status(&body, 404, "NotFound");
    assert_eq!(body["message"], r#"deployments.apps "nope" not found"#);
    assert_eq!(
        body["details"],
        json!({"name": "nope", "group": "apps", "kind": "deployments"})
    );
    // A create of what exists: 409 AlreadyExists.
    let (code, body, _) = call(
        &fake,
        "POST",
        DEPLOYMENTS,
        "application/json",
        d.to_string(),
    )
    .await;
    assert_eq!(code, 409);
    assert_status(&body, 409, "AlreadyExists");
    // A stale resourceVersion: 409 Conflict.
    let mut stale = fake.get(APPS, "deployments", "shop", "web").unwrap();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, body, _) = call(&fake, "PUT", &one, "application/json", stale.to_string()).await;
    assert_eq!(code, 409);
    assert_status(&body, 409, "Conflict");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified"),
        "{body}"
    );
}

/// Admission as the API server runs it: RBAC escalation prevention for
/// Roles, OwnerReferencesPermissionEnforcement for `blockOwnerDeletion`, and
/// Pod Security in a namespace that enforces `restricted`.
#[tokio::test]
async fn admission_refuses_escalation_unowned_finalizers_and_privileged_pods() {
    let fake = FakeKube::start_with(Options {
        readiness: fake_kube::Readiness::After(Duration::from_millis(20)),
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    fake.install_operator_rbac();
    let operator = fake.service_account_token("sluice-system", "sluice-operator");
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles";
    let role = |name: &str, resource: &str, verb: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": [resource], "verbs": [verb]}]})
        .to_string()
    };
    // The operator may grant what it holds (get configmaps), not more.
    let (code, body, _) = call_as(
        &fake,
        &operator,
        "POST",
        roles,
        "application/json",
        role("reader", "configmaps", "get"),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body, _) = call_as(
        &fake,
        &operator,
        "POST",
        roles,
        "application/json",
        role("killer", "pods", "delete"),
    )
    .await;
    assert_eq!(code, 403);
    assert_status(&body, 403, "Forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{body}"
    );
    // A writer that may create ConfigMaps but not update Deployment finalizers.
    let (code, _, _) = call(
        &fake,
        "POST",
        DEPLOYMENTS,
        "application/json",
        web_deployment("web").to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let uid = fake.get(APPS, "deployments", "shop", "web").unwrap()["metadata"]["uid"].clone();
    let (code, _, _) = call(
        &fake,
        "POST",
        roles,
        "application/json",
        role("writer", "configmaps", "create"),
    )
    .await;
    assert_eq!(code, 201);
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": "shop"}]});
    let (code, body, _) = call(
        &fake,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings",
        "application/json",
        binding.to_string(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let writer = fake.service_account_token("shop", "writer");
    let owned = |name: &str, block: bool| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": uid, "blockOwnerDeletion": block}]}})
        .to_string()
    };
    let (code, body, _) = call_as(
        &fake,
        &writer,
        "POST",
        CMS,
        "application/json",
        owned("a", true),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on"),
        "{body}"
    );
    let (code, _, _) = call_as(
        &fake,
        &writer,
        "POST",
        CMS,
        "application/json",
        owned("b", false),
    )
    .await;
    assert_eq!(code, 201);
    // The operator holds update on deployments/finalizers.
    let (code, body, _) = call_as(
        &fake,
        &operator,
        "POST",
        CMS,
        "application/json",
        owned("c", true),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    // Pod Security: a privileged pod in a restricted namespace.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "locked", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    let (code, body, _) = call(
        &fake,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        ns.to_string(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let mut d = web_deployment("host");
    d["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
    let (code, body, _) = call(
        &fake,
        "POST",
        "/apis/apps/v1/namespaces/locked/deployments",
        "application/json",
        d.to_string(),
    )
    .await;
    assert_eq!(code, 201, "the Deployment itself is admitted: {body}");
    until("ReplicaFailure", || {
        fake.get(APPS, "deployments", "locked", "host")
            .is_some_and(|d| {
                d["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == "ReplicaFailure"
                            && c["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("forbidden"))
                    })
            })
    })
    .await;
    assert!(fake.names("api/v1", "pods", "locked").is_empty());
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "i"}]}});
    let (code, body, _) = call(
        &fake,
        "POST",
        "/api/v1/namespaces/locked/pods",
        "application/json",
        pod.to_string(),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_status(&body, 403, "Forbidden");
}

/// 422 Invalid with the API's field paths, for the kinds Sluice writes.
#[tokio::test]
async fn invalid_objects_are_refused_with_every_cause_and_its_field() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    let invalid = |body: &Value| -> Vec<(String, String)> {
        assert_status(body, 422, "Invalid");
        body["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["field"].as_str().unwrap().to_string(),
                    c["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let has = |causes: &[(String, String)], field: &str, words: &str| {
        assert!(
            causes.iter().any(|(f, m)| f == field && m.contains(words)),
            "no cause on {field} saying {words:?}: {causes:?}"
        );
    };
    // Deployment: name, label value, selector vs template.
    let mut d = web_deployment("Web_1");
    d["metadata"]["labels"] = json!({"team": "x".repeat(64)});
    d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let (code, body, _) = call(
        &fake,
        "POST",
        DEPLOYMENTS,
        "application/json",
        d.to_string(),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let causes = invalid(&body);
    has(&causes, "metadata.name", "a lowercase RFC 1123 subdomain");
    has(
        &causes,
        "metadata.labels",
        "must be no more than 63 characters",
    );
    has(
        &causes,
        "spec.template.metadata.labels",
        "`selector` does not match template `labels`",
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with(r#"Deployment.apps "Web_1" is invalid: ["#),
        "{body}"
    );
    // Deployment: the selector is immutable.
    let web = web_deployment("web");
    let (code, _, _) = call(
        &fake,
        "POST",
        DEPLOYMENTS,
        "application/json",
        web.to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let patch = json!({"spec": {"selector": {"matchLabels": {"app": "web", "v": "2"}}, "template": {"metadata": {"labels": {"app": "web", "v": "2"}}}}});
    let (code, body, _) = call(
        &fake,
        "PATCH",
        &format!("{DEPLOYMENTS}/web"),
        "application/merge-patch+json",
        patch.to_string(),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    has(&invalid(&body), "spec.selector", "field is immutable");
    // Service: clusterIP is immutable once set.
    let services = "/api/v1/namespaces/shop/services";
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let (code, body, _) = call(&fake, "POST", services, "application/json", svc.to_string()).await;
    assert_eq!(code, 201);
    assert!(
        body["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "allocated: {body}"
    );
    let (code, body, _) = call(
        &fake,
        "PATCH",
        &format!("{services}/web"),
        "application/merge-patch+json",
        r#"{"spec": {"clusterIP": "10.9.9.9"}}"#,
    )
    .await;
    assert_eq!(code, 422);
    has(&invalid(&body), "spec.clusterIP", "field is immutable");
    // ConfigMap: two controllers, a bad key.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a", "uid": "u1", "controller": true},
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "b", "uid": "u2", "controller": true},
    ]}, "data": {"bad key": "v"}});
    let (code, body, _) = call(&fake, "POST", CMS, "application/json", cm.to_string()).await;
    assert_eq!(code, 422);
    let causes = invalid(&body);
    has(
        &causes,
        "metadata.ownerReferences",
        "Only one reference can have Controller set to true",
    );
    has(
        &causes,
        "data[bad key]",
        "a valid config key must consist of alphanumeric characters",
    );
    // HPA: minReplicas and a target.
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
        "spec": {"minReplicas": 0, "maxReplicas": 3, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}});
    let (code, body, _) = call(
        &fake,
        "POST",
        "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers",
        "application/json",
        hpa.to_string(),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    has(
        &invalid(&body),
        "spec.minReplicas",
        "must be greater than or equal to 1",
    );
    // Role: a rule without verbs.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"]}]});
    let (code, body, _) = call(
        &fake,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles",
        "application/json",
        role.to_string(),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    has(
        &invalid(&body),
        "rules[0].verbs",
        "verbs must contain at least one value",
    );
    // Lease: a negative duration.
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": -1}});
    let (code, body, _) = call(
        &fake,
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/shop/leases",
        "application/json",
        lease.to_string(),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    has(
        &invalid(&body),
        "spec.leaseDurationSeconds",
        "must be greater than 0",
    );
}

/// A watch from a resourceVersion older than the history is 410 Gone (an
/// ERROR event with an Expired Status); one within it replays in order.
#[tokio::test]
async fn a_watch_from_a_compacted_version_is_gone_and_a_recent_one_replays() {
    let fake = FakeKube::start_with(Options {
        history: 5,
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let first = fake.put(
        "api/v1",
        "configmaps",
        "shop",
        json!({"metadata": {"name": "c0"}, "data": {"i": "0"}}),
    );
    let old_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut rvs = Vec::new();
    for i in 1..=20 {
        let o = fake.put(
            "api/v1",
            "configmaps",
            "shop",
            json!({"metadata": {"name": format!("c{i}")}, "data": {"i": i.to_string()}}),
        );
        rvs.push(
            o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let url = format!(
        "http://{}{CMS}?watch=true&resourceVersion={old_rv}&timeoutSeconds=1",
        fake.addr
    );
    let lines = watch_lines(&url, Duration::from_secs(5)).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "ERROR");
    assert_status(&lines[0]["object"], 410, "Expired");
    assert!(
        lines[0]["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version")
    );
    // From the third-newest: exactly the two newer events, in order.
    let from = &rvs[17];
    let url = format!(
        "http://{}{CMS}?watch=true&resourceVersion={from}&timeoutSeconds=1",
        fake.addr
    );
    let lines = watch_lines(&url, Duration::from_secs(5)).await;
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap(),
                l["object"]["metadata"]["resourceVersion"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("ADDED", rvs[18].as_str()), ("ADDED", rvs[19].as_str())]
    );
}

/// Every JSON line of a watch until it ends or `limit` passes.
async fn watch_lines(url: &str, limit: Duration) -> Vec<Value> {
    let resp = open_watch(url).await;
    read_watch(resp, limit).await.0
}

async fn open_watch(url: &str) -> hyper::Response<hyper::body::Incoming> {
    let req = http::Request::get(url)
        .header(
            "authorization",
            format!("Bearer {}", fake_kube::ADMIN_TOKEN),
        )
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = h1_client().request(req).await.expect("watch request");
    assert_eq!(resp.status(), 200);
    resp
}

/// Reads a watch body: (events, whether the server ended it).
async fn read_watch(
    resp: hyper::Response<hyper::body::Incoming>,
    limit: Duration,
) -> (Vec<Value>, bool) {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let ended = loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break false,
            Ok(None) => break true,
            Ok(Some(frame)) => {
                if let Ok(data) = frame.expect("watch body").into_data() {
                    buf.extend_from_slice(&data);
                    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        out.push(serde_json::from_slice(&line).expect("a watch line is JSON"));
                    }
                }
            }
        }
    };
    (out, ended)
}

#[tokio::test]
async fn bookmarks_come_to_watchers_that_ask_and_only_to_them() {
    let fake = FakeKube::start_with(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let o = fake.put(
        "api/v1",
        "configmaps",
        "shop",
        json!({"metadata": {"name": "c"}}),
    );
    let rv = o["metadata"]["resourceVersion"].as_str().unwrap();
    let asking = open_watch(&format!(
        "http://{}{CMS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true",
        fake.addr
    ))
    .await;
    let silent = open_watch(&format!(
        "http://{}{CMS}?watch=true&resourceVersion={rv}",
        fake.addr
    ))
    .await;
    let (lines, _) = read_watch(asking, Duration::from_millis(700)).await;
    let bookmarks: Vec<&Value> = lines.iter().filter(|l| l["type"] == "BOOKMARK").collect();
    assert!(bookmarks.len() >= 3, "{lines:?}");
    for b in &bookmarks {
        assert_eq!(b["object"]["kind"], "ConfigMap");
        let brv: u64 = b["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(brv >= rv.parse::<u64>().unwrap(), "{b}");
    }
    let (lines, _) = read_watch(silent, Duration::from_millis(300)).await;
    assert!(lines.iter().all(|l| l["type"] != "BOOKMARK"), "{lines:?}");
}

/// A watcher that does not read falls behind; the server ends its watch
/// instead of dropping events: what it got has no gap, and it ends.
#[tokio::test]
async fn a_lagging_watcher_is_cut_off_never_given_a_gap() {
    let fake = FakeKube::start_with(Options {
        watch_buffer: 16,
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let o = fake.put(
        "api/v1",
        "configmaps",
        "shop",
        json!({"metadata": {"name": "start"}}),
    );
    let rv: u64 = o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let resp = open_watch(&format!(
        "http://{}{CMS}?watch=true&resourceVersion={rv}",
        fake.addr
    ))
    .await;
    // Far more than socket buffers hold, while nobody reads.
    let big = "x".repeat(64 * 1024);
    let writes = 400u64;
    for i in 0..writes {
        fake.put(
            "api/v1",
            "configmaps",
            "shop",
            json!({"metadata": {"name": format!("c{i}")}, "data": {"big": big}}),
        );
    }
    let (lines, ended) = read_watch(resp, Duration::from_secs(30)).await;
    assert!(ended, "the server must end a lagging watch");
    let got: Vec<u64> = lines
        .iter()
        .map(|l| {
            l["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        !got.is_empty() && (got.len() as u64) < writes,
        "cut off part-way: {} events",
        got.len()
    );
    let expected: Vec<u64> = (rv + 1..=rv + got.len() as u64).collect();
    assert_eq!(got, expected, "no gap before the end");
    // A re-list then sees everything.
    let (code, list, _) = call(&fake, "GET", CMS, "", "").await;
    assert_eq!(code, 200);
    assert_eq!(list["items"].as_array().unwrap().len() as u64, writes + 1);
    assert_eq!(
        list["metadata"]["resourceVersion"],
        (rv + writes).to_string()
    );
}

/// Random patches of every type, some malformed, at a Deployment: the fake
/// answers each with a JSON body (a Status with the same code when it
/// refuses), never a 5xx, and keeps serving.
#[tokio::test]
async fn random_patches_never_break_the_server() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    let (code, _, _) = call(
        &fake,
        "POST",
        DEPLOYMENTS,
        "application/json",
        web_deployment("web").to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let seed = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = sluice_loadtest::Rng::new(seed);
    let one = format!("{DEPLOYMENTS}/web");
    let types = [
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/json-patch+json",
        "application/apply-patch+yaml",
    ];
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..fuzz_cases() {
        let ct = types[(rng.next_u64() % 4) as usize];
        let body = if rng.next_u64().is_multiple_of(10) {
            // Bytes that are not JSON at all.
            (0..(rng.next_u64() % 40))
                .map(|_| (rng.next_u64() % 256) as u8)
                .collect::<Vec<u8>>()
        } else if ct == "application/json-patch+json" {
            random_json_patch(&mut rng).to_string().into_bytes()
        } else {
            let mut v = random_value(&mut rng, 0);
            if ct == "application/apply-patch+yaml"
                && v.is_object()
                && rng.next_u64().is_multiple_of(2)
            {
                v["apiVersion"] = json!("apps/v1");
                v["kind"] = json!("Deployment");
            }
            v.to_string().into_bytes()
        };
        let path = if ct == "application/apply-patch+yaml" && i % 3 != 0 {
            format!("{one}?fieldManager=fuzz&force={}", i % 2 == 0)
        } else {
            one.clone()
        };
        let (code, answer, _) = call(&fake, "PATCH", &path, ct, body.clone()).await;
        assert!(
            code < 500,
            "{ct} {}: {code} {answer}",
            String::from_utf8_lossy(&body)
        );
        if code >= 400 {
            assert_eq!(answer["kind"], "Status", "{answer}");
            assert_eq!(answer["code"], code, "{answer}");
        } else {
            assert_eq!(answer["metadata"]["name"], "web", "{answer}");
        }
        *codes.entry(code).or_insert(0) += 1;
    }
    // The generator reaches both success and each kind of refusal.
    assert!(
        codes.contains_key(&200) && codes.contains_key(&400) && codes.contains_key(&422),
        "{codes:?}"
    );
    let (code, _, _) = call(&fake, "GET", &one, "", "").await;
    assert_eq!(code, 200, "still serving");
}

/// 400 cases; `SLUICE_FUZZ_CASES` (and `SLUICE_FUZZ_SEED`) for a longer run.
fn fuzz_cases() -> u64 {
    std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "labels",
    "annotations",
    "replicas",
    "template",
    "containers",
    "name",
    "image",
    "ports",
    "containerPort",
    "env",
    "value",
    "selector",
    "matchLabels",
    "app",
    "$patch",
    "$setElementOrder/containers",
    "$retainKeys",
    "$deleteFromPrimitiveList/finalizers",
    "finalizers",
    "ownerReferences",
    "uid",
    "strategy",
    "x",
];

fn random_value(rng: &mut sluice_loadtest::Rng, depth: u32) -> Value {
    let pick = |rng: &mut sluice_loadtest::Rng, n: u64| rng.next_u64() % n;
    match pick(rng, if depth > 4 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(pick(rng, 5) as i64 - 1),
        2 => json!(["delete", "replace", "merge", "web", "app:2", ""][pick(rng, 6) as usize]),
        3 => json!(pick(rng, 2) == 0),
        4 => json!("x".repeat(pick(rng, 70) as usize)),
        5 | 6 => {
            let mut m = serde_json::Map::new();
            for _ in 0..pick(rng, 4) {
                let k = KEYS[pick(rng, KEYS.len() as u64) as usize];
                m.insert(k.to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => Value::Array(
            (0..pick(rng, 3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
    }
}

fn random_json_patch(rng: &mut sluice_loadtest::Rng) -> Value {
    let ops = ["add", "remove", "replace", "move", "copy", "test", "bogus"];
    let paths = [
        "/spec/replicas",
        "/metadata/labels/x",
        "/spec/template/spec/containers/0/image",
        "/spec/template/spec/containers/-",
        "/spec/selector",
        "/nope/deeper",
        "",
        "/metadata/name",
        "bad",
    ];
    let n = rng.next_u64() % 4;
    Value::Array(
        (0..n)
            .map(|_| {
                let mut op = json!({
                    "op": ops[(rng.next_u64() % ops.len() as u64) as usize],
                    "path": paths[(rng.next_u64() % paths.len() as u64) as usize],
                });
                if !rng.next_u64().is_multiple_of(3) {
                    op["value"] = random_value(rng, 3);
                }
                if rng.next_u64().is_multiple_of(2) {
                    op["from"] = json!(paths[(rng.next_u64() % paths.len() as u64) as usize]);
                }
                op
            })
            .collect(),
    )
}

// === controllers ===

/// The Deployment controller rolls a new template out within maxSurge and
/// maxUnavailable while the kubelet makes pods ready after a delay; the
/// EndpointSlice controller follows. An invariant checked at every change
/// holds through it, and the same invariant catches a scale to zero.
#[tokio::test]
async fn a_rolling_update_keeps_ready_endpoints_and_the_invariant_catches_an_outage() {
    let fake = FakeKube::start_with(Options {
        readiness: fake_kube::Readiness::After(Duration::from_millis(150)),
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let (code, _, _) = call(
        &fake,
        "POST",
        DEPLOYMENTS,
        "application/json",
        web_deployment("web").to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    let (code, _, _) = call(
        &fake,
        "POST",
        "/api/v1/namespaces/shop/services",
        "application/json",
        svc.to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let rolled_out = |generation: i64| {
        let d = fake.get(APPS, "deployments", "shop", "web").unwrap();
        let s = &d["status"];
        s["observedGeneration"] == generation
            && s["updatedReplicas"] == 2
            && s["readyReplicas"] == 2
            && s["replicas"] == 2
    };
    until("first rollout", || rolled_out(1)).await;
    assert_eq!(fake.view(|v| v.ready_endpoints("shop", "web", "http")), 2);
    fake.invariant("web has a ready endpoint", |v| {
        match v.ready_endpoints("shop", "web", "http") {
            0 => Err("Service web has no ready endpoint on http".into()),
            _ => Ok(()),
        }
    });
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}});
    let (code, body, _) = call(
        &fake,
        "PATCH",
        &format!("{DEPLOYMENTS}/web"),
        "application/strategic-merge-patch+json",
        patch.to_string(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["metadata"]["generation"], 2);
    until("second rollout", || rolled_out(2)).await;
    // Old pods terminating or gone, new ones ready: maxUnavailable 25% of 2 is 0, so at no
    // time were fewer than two ready.
    let images: Vec<String> = fake.view(|v| {
        v.list("api/v1", "pods", "shop")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    });
    assert_eq!(images, ["app:2", "app:2"]);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // The checker is not blind: scaling to zero is an outage it records.
    let (code, _, _) = call(
        &fake,
        "PATCH",
        &format!("{DEPLOYMENTS}/web"),
        "application/merge-patch+json",
        r#"{"spec": {"replicas": 0}}"#,
    )
    .await;
    assert_eq!(code, 200);
    until("the outage is seen", || !fake.violations().is_empty()).await;
    assert!(fake.violations()[0].detail.contains("no ready endpoint"));
}

/// Waits up to 10 s for `f`.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One Event store behind `v1` and `events.k8s.io/v1`: an Event the
/// operator's recorder (kube's `Recorder`, through `events.k8s.io/v1`)
/// writes, and its series update (a merge patch), are what the real
/// `kubectl get events` and `kubectl describe deployment` (both `v1`) show,
/// mapped field by field; field selectors of either version find it, and a
/// watch on each version sees it in that version's form.
// kubectl runs blocking; the fake is served by the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_events_are_the_core_events_kubectl_shows() {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event as NewEvent;
    use kube::api::{Api, PostParams, WatchEvent, WatchParams};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let fake = FakeKube::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let dir = TempDir::new("fake-events");
    let kubeconfig = dir.path.join("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let client = fake.client();
    let core_watch = Api::<CoreEvent>::namespaced(client.clone(), "shop")
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch v1 events");
    let new_watch = Api::<NewEvent>::namespaced(client.clone(), "shop")
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch events.k8s.io events");
    let deployment: Deployment = serde_json::from_value(web_deployment("web")).unwrap();
    let deployment = Api::<Deployment>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "sluice".into(),
            instance: Some("sluice-0".into()),
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "RolledBack".into(),
        note: Some("canary failed its gate".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(&deployment, &());
    for _ in 0..2 {
        recorder.publish(&event, &reference).await.expect("publish");
    }

    let kubectl = |args: &[&str]| -> String {
        let out = Command::new(kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &dir.path)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed: Value =
        serde_json::from_str(&kubectl(&["get", "events", "-n", "shop", "-o", "json"])).unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one Event, its repeat a series: {listed}");
    let e = &items[0];
    assert_eq!(e["apiVersion"], "v1");
    assert_eq!(e["message"], "canary failed its gate");
    assert_eq!(e["reason"], "RolledBack");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["involvedObject"]["kind"], "Deployment");
    assert_eq!(e["involvedObject"]["name"], "web");
    assert_eq!(
        e["involvedObject"]["uid"],
        json!(deployment.metadata.uid.clone().unwrap())
    );
    assert_eq!(e["reportingComponent"], "sluice");
    assert_eq!(e["reportingInstance"], "sluice-0");
    assert_eq!(
        e["source"],
        json!({"component": "sluice", "host": "sluice-0"})
    );
    assert_eq!(e["series"]["count"], 2, "{e}");
    assert!(e["eventTime"].is_string());

    let described = kubectl(&["describe", "deployment", "web", "-n", "shop"]);
    let events = described
        .split("Events:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Events section: {described}"));
    assert!(
        events.contains("Warning")
            && events.contains("RolledBack")
            && events.contains("sluice")
            && events.contains("canary failed its gate"),
        "{events}"
    );

    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["get", "-n", "shop", "-o", "name"];
        all.extend_from_slice(args);
        kubectl(&all).lines().map(str::to_string).collect()
    };
    let name = e["metadata"]["name"].as_str().unwrap();
    let uid = deployment.metadata.uid.clone().unwrap();
    for selector in [
        format!("involvedObject.uid={uid}"),
        "involvedObject.name=web,involvedObject.kind=Deployment,involvedObject.namespace=shop"
            .to_string(),
        "reason=RolledBack,type=Warning".to_string(),
    ] {
        assert_eq!(
            names(&["events", "--field-selector", &selector]),
            [format!("event/{name}")],
            "{selector}"
        );
    }
    for selector in [
        "type=Normal",
        "involvedObject.name=other",
        "reason!=RolledBack",
    ] {
        assert!(
            names(&["events", "--field-selector", selector]).is_empty(),
            "{selector}"
        );
    }
    assert_eq!(
        names(&[
            "events.v1.events.k8s.io",
            "--field-selector",
            "regarding.name=web,reportingController=sluice"
        ]),
        [format!("event.events.k8s.io/{name}")]
    );

    // Each watch saw the Event created and then its series, in its own form.
    let seen = |stream: std::pin::Pin<Box<dyn futures::Stream<Item = Value> + Send>>| async move {
        tokio::time::timeout(Duration::from_secs(10), stream.take(2).collect::<Vec<_>>())
            .await
            .expect("two watch events")
    };
    let core: Vec<Value> = seen(Box::pin(core_watch.map(|e| match e.expect("watch") {
        WatchEvent::Added(o) | WatchEvent::Modified(o) => serde_json::to_value(o).unwrap(),
        other => panic!("{other:?}"),
    })))
    .await;
    assert_eq!(core[0]["message"], "canary failed its gate");
    assert_eq!(core[1]["series"]["count"], 2);
    let new: Vec<Value> = seen(Box::pin(new_watch.map(|e| match e.expect("watch") {
        WatchEvent::Added(o) | WatchEvent::Modified(o) => serde_json::to_value(o).unwrap(),
        other => panic!("{other:?}"),
    })))
    .await;
    assert_eq!(new[0]["note"], "canary failed its gate");
    assert_eq!(new[0]["regarding"]["name"], "web");
    assert_eq!(new[1]["series"]["count"], 2);
}

/// Deployments roll through ReplicaSets as the real controller does,
/// driven and read with the real kubectl: maxSurge 30% of 10 rounds up to
/// 3 and maxUnavailable 25% rounds down to 2, so through the whole rollout
/// there are never more than 13 pods nor fewer than 8 available (an
/// invariant checked after every change, which the rollout reaches
/// exactly); the ReplicaSets are `<name>-<pod-template-hash>` with the hash
/// on their labels, selector and pods and the revision annotated; Recreate
/// never runs both templates; both bounds zero is a 422; deleting the
/// Deployment takes its ReplicaSets and their pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_updates_follow_max_surge_and_max_unavailable() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    let fake = FakeKube::start_with(Options {
        tls: true,
        readiness: fake_kube::Readiness::After(Duration::from_millis(150)),
        // Terminating pods are not what this test looks at.
        termination_cap: Some(Duration::ZERO),
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let dir = TempDir::new("fake-rollout");
    let kubeconfig = dir.path.join("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let peak_pods = Arc::new(AtomicI64::new(0));
    let least_available = Arc::new(AtomicI64::new(i64::MAX));
    let (peak, least) = (peak_pods.clone(), least_available.clone());
    fake.invariant("rollout bounds", move |view| {
        let pods: Vec<&Value> = view
            .list("api/v1", "pods", "shop")
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web")
            // The bounds are on the pods that run: terminating ones do
            // not count, as for the real controller.
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let total = pods.len() as i64;
        let ready = pods
            .iter()
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count() as i64;
        let templates = view.list(APPS, "replicasets", "shop").len();
        peak.fetch_max(total, Ordering::SeqCst);
        if total > 13 {
            return Err(format!("{total} pods, more than 10 + maxSurge 3"));
        }
        // During an update (two templates), availability holds.
        if templates >= 2 {
            least.fetch_min(ready, Ordering::SeqCst);
            if ready < 8 {
                return Err(format!(
                    "{ready} available, fewer than 10 - maxUnavailable 2"
                ));
            }
        }
        Ok(())
    });
    let kubectl = |args: &[&str]| -> (bool, String, String) {
        let out = Command::new(kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &dir.path)
            .args(["-n", "shop"])
            .args(args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |args: &[&str]| -> String {
        let (ok, out, err) = kubectl(args);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    };
    let manifest = |name: &str, replicas: u32, strategy: &str, image: &str| {
        let path = dir.path.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  strategy:\n{strategy}  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - {{name: c, image: '{image}'}}\n"
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let rolling =
        "    type: RollingUpdate\n    rollingUpdate: {maxSurge: 30%, maxUnavailable: 25%}\n";
    ok(&["apply", "-f", &manifest("web", 10, rolling, "web:1")]);
    ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    ok(&["apply", "-f", &manifest("web", 10, rolling, "web:2")]);
    let status = ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert_eq!(peak_pods.load(Ordering::SeqCst), 13, "the surge was used");
    assert_eq!(
        least_available.load(Ordering::SeqCst),
        8,
        "the unavailability was used"
    );

    let sets: Value = serde_json::from_str(&ok(&["get", "rs", "-o", "json"])).unwrap();
    let mut sets = sets["items"].as_array().unwrap().clone();
    sets.sort_by_key(|rs| {
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .unwrap()
            .to_string()
    });
    assert_eq!(sets.len(), 2);
    let deployment: Value =
        serde_json::from_str(&ok(&["get", "deployment", "web", "-o", "json"])).unwrap();
    for (rs, (revision, replicas, image)) in
        sets.iter().zip([("1", 0, "web:1"), ("2", 10, "web:2")])
    {
        let hash = rs["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
            hash
        );
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"],
            hash
        );
        assert_eq!(
            rs["spec"]["template"]["spec"]["containers"][0]["image"],
            image
        );
        assert_eq!(
            rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            revision
        );
        assert_eq!(rs["spec"]["replicas"], replicas);
        assert_eq!(rs["status"]["replicas"], replicas);
        assert_eq!(
            rs["metadata"]["ownerReferences"][0]["uid"],
            deployment["metadata"]["uid"]
        );
        assert_eq!(rs["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let pods: Value =
        serde_json::from_str(&ok(&["get", "pods", "-l", "app=web", "-o", "json"])).unwrap();
    // The old ReplicaSet's pods may still be terminating: the running ones.
    let pods: Vec<&Value> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(pods.len(), 10);
    for p in pods {
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["uid"],
            sets[1]["metadata"]["uid"]
        );
        assert_eq!(
            p["metadata"]["labels"]["pod-template-hash"],
            sets[1]["metadata"]["labels"]["pod-template-hash"]
        );
    }
    let s = &deployment["status"];
    assert_eq!(
        (
            &s["replicas"],
            &s["updatedReplicas"],
            &s["readyReplicas"],
            &s["availableReplicas"],
            &s["unavailableReplicas"],
            &s["observedGeneration"]
        ),
        (
            &json!(10),
            &json!(10),
            &json!(10),
            &json!(10),
            &json!(0),
            &deployment["metadata"]["generation"]
        )
    );
    let condition = |kind: &str| {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} condition: {s}"))
    };
    assert_eq!(condition("Available")["status"], "True");
    assert_eq!(condition("Available")["reason"], "MinimumReplicasAvailable");
    assert_eq!(condition("Progressing")["reason"], "NewReplicaSetAvailable");

    // Recreate: the old pods all go before any new one exists.
    let both = Arc::new(AtomicI64::new(0));
    let seen_both = both.clone();
    fake.invariant("recreate never overlaps", move |view| {
        let mut hashes: Vec<String> = view
            .list("api/v1", "pods", "shop")
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "once")
            .filter_map(|p| {
                p["metadata"]["labels"]["pod-template-hash"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        hashes.sort();
        hashes.dedup();
        if hashes.len() > 1 {
            seen_both.fetch_add(1, Ordering::SeqCst);
            return Err(format!("pods of templates {hashes:?} at once"));
        }
        Ok(())
    });
    let recreate = "    type: Recreate\n";
    ok(&["apply", "-f", &manifest("once", 3, recreate, "once:1")]);
    ok(&["rollout", "status", "deployment/once", "--timeout=30s"]);
    ok(&["apply", "-f", &manifest("once", 3, recreate, "once:2")]);
    ok(&["rollout", "status", "deployment/once", "--timeout=30s"]);
    assert_eq!(both.load(Ordering::SeqCst), 0, "{:?}", fake.violations());
    let images = ok(&[
        "get",
        "pods",
        "-l",
        "app=once",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(images, "once:2 once:2 once:2");

    // Both bounds zero is refused as the API's validation does.
    for zero in [
        "{maxSurge: 0, maxUnavailable: 0}",
        "{maxSurge: 0%, maxUnavailable: 0%}",
    ] {
        let strategy = format!("    type: RollingUpdate\n    rollingUpdate: {zero}\n");
        let (ok_, _, err) = kubectl(&["apply", "-f", &manifest("zero", 2, &strategy, "z:1")]);
        assert!(!ok_, "{zero} was taken");
        assert!(
            err.contains("The Deployment \"zero\" is invalid: spec.strategy.rollingUpdate.maxUnavailable: Invalid value:")
                && err.contains("may not be 0 when `maxSurge` is 0"),
            "{err}"
        );
    }

    // Garbage collection: Deployment -> ReplicaSets -> Pods.
    ok(&["delete", "deployment", "web"]);
    until("the ReplicaSets and pods of web are collected", || {
        fake.names(APPS, "replicasets", "shop")
            .iter()
            .all(|n| !n.starts_with("web-"))
            && fake
                .names("api/v1", "pods", "shop")
                .iter()
                .all(|n| !n.starts_with("web-"))
    })
    .await;
}

// === server-side printing and graceful pod deletion ===

/// kubectl's human output, split into its tables (blank-line separated),
/// each row a map from the header's column to the cell.
fn printed_tables(out: &str) -> Vec<Vec<std::collections::BTreeMap<String, String>>> {
    out.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut lines = block.lines().filter(|l| !l.trim().is_empty());
            let header = lines.next().expect("a header line");
            let bytes = header.as_bytes();
            // A column starts after two or more spaces (headers such as
            // `LAST SEEN` hold one).
            let mut starts = vec![0];
            for i in 2..bytes.len() {
                if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
                    starts.push(i);
                }
            }
            let cut = |line: &str, i: usize| -> String {
                let from = starts[i].min(line.len());
                let to = starts
                    .get(i + 1)
                    .map_or(line.len(), |e| (*e).min(line.len()));
                line[from..to].trim().to_string()
            };
            let names: Vec<String> = (0..starts.len()).map(|i| cut(header, i)).collect();
            lines
                .map(|l| {
                    names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.clone(), cut(l, i)))
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn headers_of(out: &str) -> Vec<String> {
    out.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            b.lines()
                .next()
                .unwrap()
                .split("  ")
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// `kubectl get` asks for Tables: events show the reason and message in
/// their columns, deployments, ReplicaSets, pods and Services the real
/// columns (`-o wide` more), `-w` a new row per change, `-o json` the
/// objects as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_the_servers_tables() {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, PostParams};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let fake = FakeKube::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let dir = TempDir::new("fake-tables");
    let kubeconfig = dir.path.join("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let client = fake.client();
    let deployment: Deployment = serde_json::from_value(web_deployment("web")).unwrap();
    let deployment = Api::<Deployment>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    fake.put(
        "api/v1",
        "services",
        "shop",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.9",
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
    );
    fake.make_ready("shop", "web").expect("the Deployment");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "sluice".into(),
            instance: Some("sluice-0".into()),
        },
    );
    let reference = kube::Resource::object_ref(&deployment, &());
    recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: "RolledBack".into(),
                note: Some("canary failed its gate: success rate 80% < 99%".into()),
                action: "Reconcile".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .expect("publish");

    let kubectl = |args: &[&str]| -> String {
        let out = Command::new(kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &dir.path)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let events = kubectl(&["get", "events", "-n", "shop"]);
    assert_eq!(
        headers_of(&events),
        ["LAST SEEN|TYPE|REASON|OBJECT|MESSAGE"],
        "{events}"
    );
    let rows = &printed_tables(&events)[0];
    let row = rows
        .iter()
        .find(|r| r["REASON"] == "RolledBack")
        .unwrap_or_else(|| panic!("no RolledBack row: {events}"));
    assert_eq!(row["TYPE"], "Warning", "{events}");
    assert_eq!(row["OBJECT"], "deployment/web", "{events}");
    assert_eq!(
        row["MESSAGE"], "canary failed its gate: success rate 80% < 99%",
        "{events}"
    );
    assert!(row["LAST SEEN"].ends_with('s'), "an age: {events}");

    let all = kubectl(&["get", "deploy,rs,pods,svc", "-n", "shop"]);
    assert_eq!(
        headers_of(&all),
        [
            "NAME|READY|UP-TO-DATE|AVAILABLE|AGE",
            "NAME|DESIRED|CURRENT|READY|AGE",
            "NAME|READY|STATUS|RESTARTS|AGE",
            "NAME|TYPE|CLUSTER-IP|EXTERNAL-IP|PORT(S)|AGE",
        ],
        "{all}"
    );
    let tables = printed_tables(&all);
    let d = &tables[0][0];
    assert_eq!(
        (
            d["NAME"].as_str(),
            d["READY"].as_str(),
            d["UP-TO-DATE"].as_str(),
            d["AVAILABLE"].as_str()
        ),
        ("deployment.apps/web", "2/2", "2", "2"),
        "{all}"
    );
    let rs = &tables[1][0];
    assert!(rs["NAME"].starts_with("replicaset.apps/web-"), "{all}");
    assert_eq!(
        (
            rs["DESIRED"].as_str(),
            rs["CURRENT"].as_str(),
            rs["READY"].as_str()
        ),
        ("2", "2", "2"),
        "{all}"
    );
    assert_eq!(tables[2].len(), 2, "{all}");
    for p in &tables[2] {
        assert_eq!(
            (
                p["READY"].as_str(),
                p["STATUS"].as_str(),
                p["RESTARTS"].as_str()
            ),
            ("1/1", "Running", "0"),
            "{all}"
        );
    }
    let svc = &tables[3][0];
    assert_eq!(
        (
            svc["NAME"].as_str(),
            svc["TYPE"].as_str(),
            svc["CLUSTER-IP"].as_str(),
            svc["EXTERNAL-IP"].as_str(),
            svc["PORT(S)"].as_str()
        ),
        ("service/web", "ClusterIP", "10.96.0.9", "<none>", "80/TCP"),
        "{all}"
    );

    let wide = kubectl(&["get", "deploy", "web", "-n", "shop", "-o", "wide"]);
    assert_eq!(
        headers_of(&wide),
        ["NAME|READY|UP-TO-DATE|AVAILABLE|AGE|CONTAINERS|IMAGES|SELECTOR"],
        "{wide}"
    );
    let w = &printed_tables(&wide)[0][0];
    assert_eq!(
        (
            w["CONTAINERS"].as_str(),
            w["IMAGES"].as_str(),
            w["SELECTOR"].as_str()
        ),
        ("app", "app:1", "app=web"),
        "{wide}"
    );
    let slices = kubectl(&["get", "endpointslices", "-n", "shop"]);
    assert_eq!(
        headers_of(&slices),
        ["NAME|ADDRESSTYPE|PORTS|ENDPOINTS|AGE"],
        "{slices}"
    );
    let s = &printed_tables(&slices)[0][0];
    assert_eq!(
        (s["ADDRESSTYPE"].as_str(), s["PORTS"].as_str()),
        ("IPv4", "8080")
    );
    assert_eq!(s["ENDPOINTS"].split(',').count(), 2, "{slices}");

    // -o json: the plain list, whole objects.
    let listed: Value =
        serde_json::from_str(&kubectl(&["get", "deploy", "-n", "shop", "-o", "json"])).unwrap();
    assert_eq!(listed["kind"], "List");
    assert_eq!(listed["items"][0]["kind"], "Deployment");
    assert_eq!(listed["items"][0]["spec"]["replicas"], 2);

    // -w: a new row when the Deployment changes.
    let mut watch = Command::new(sluice_tests::kubectl())
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &dir.path)
        .args(["get", "deploy", "web", "-n", "shop", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a line from kubectl get -w within 10 s")
    };
    assert!(next().starts_with("NAME "), "the header first");
    assert!(next().starts_with("web "), "the row");
    kubectl(&["scale", "deploy", "web", "-n", "shop", "--replicas", "3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = next();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], "web", "{line}");
        assert!(!line.starts_with("NAME"), "one header only: {line}");
        if cells[1].ends_with("/3") {
            break;
        }
        assert!(Instant::now() < deadline, "no row for 3 replicas");
    }
    let _ = watch.kill();
    let _ = watch.wait();
    drop(rx);
    reader.join().expect("watch reader");
}

/// One GET with an `Accept` header, as the admin of a plain-HTTP fake.
async fn get_accepting(fake: &FakeKube, path: &str, accept: &str) -> (u16, Value) {
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}{path}", fake.addr))
        .header(
            "authorization",
            format!("Bearer {}", fake_kube::ADMIN_TOKEN),
        )
        .header("accept", accept)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let (status, _, body) = send(&h1_client(), req).await.expect("the fake answers");
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body:?}"));
    (status.as_u16(), value)
}

const AS_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// The Table on the wire: every column with its type, format and priority
/// (the wide ones 1), a cell per column, the object per `includeObject`,
/// `v1beta1` when only that is asked, 406 for a version the server lacks,
/// 400 for a bad `includeObject`, the default table for kinds without a
/// printer, and a watch's rows as one-row Tables, columns only in the first.
#[tokio::test]
async fn tables_on_the_wire_follow_the_meta_api() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    let (code, _, _) = call(
        &fake,
        "POST",
        CMS,
        "application/json",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}).to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let (code, t) = get_accepting(&fake, CMS, AS_TABLE).await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(
        (t["kind"].as_str(), t["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1"))
    );
    let names: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Name", "Data", "Age"]);
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(t["columnDefinitions"][1]["type"], "integer");
    for c in t["columnDefinitions"].as_array().unwrap() {
        assert!(
            c["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{c}"
        );
        assert_eq!(c["priority"], 0, "{c}");
    }
    let row = &t["rows"][0];
    assert_eq!(row["cells"][0], "c");
    assert_eq!(row["cells"][1], 2);
    assert!(row["cells"][2].as_str().unwrap().ends_with('s'), "{row}");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["name"], "c");
    assert!(row["object"].get("data").is_none(), "{row}");

    let (_, t) = get_accepting(&fake, &format!("{CMS}?includeObject=Object"), AS_TABLE).await;
    assert_eq!(t["rows"][0]["object"]["data"]["b"], "2", "{t}");
    let (_, t) = get_accepting(&fake, &format!("{CMS}?includeObject=None"), AS_TABLE).await;
    assert!(t["rows"][0].get("object").is_none(), "{t}");
    let (code, t) = get_accepting(&fake, &format!("{CMS}?includeObject=All"), AS_TABLE).await;
    assert_status(&t, 400, "BadRequest");
    assert_eq!(code, 400);
    let (code, t) = get_accepting(
        &fake,
        CMS,
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
    )
    .await;
    assert_eq!(
        (code, t["apiVersion"].as_str()),
        (200, Some("meta.k8s.io/v1beta1"))
    );
    let (code, t) = get_accepting(&fake, CMS, "application/json;as=Table;v=v2;g=meta.k8s.io").await;
    assert_status(&t, 406, "NotAcceptable");
    assert_eq!(code, 406);
    let (code, t) = get_accepting(&fake, CMS, "application/json").await;
    assert_eq!((code, t["kind"].as_str()), (200, Some("ConfigMapList")));
    let (_, t) = get_accepting(&fake, &format!("{CMS}/c"), AS_TABLE).await;
    assert_eq!(
        (t["kind"].as_str(), t["rows"].as_array().map(Vec::len)),
        (Some("Table"), Some(1))
    );

    // Pods: the wide columns are sent with priority 1.
    let (_, t) = get_accepting(&fake, "/api/v1/namespaces/shop/pods", AS_TABLE).await;
    let prio: Vec<(String, i64)> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["priority"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        prio,
        [
            ("Name".into(), 0),
            ("Ready".into(), 0),
            ("Status".into(), 0),
            ("Restarts".into(), 0),
            ("Age".into(), 0),
            ("IP".into(), 1),
            ("Node".into(), 1),
            ("Nominated Node".into(), 1),
            ("Readiness Gates".into(), 1),
        ]
    );
    // A kind without a printer: Name and Created At (a date).
    let (code, _, _) = call(
        &fake,
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/shop/leases",
        "application/json",
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}})
            .to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let (_, t) = get_accepting(
        &fake,
        "/apis/coordination.k8s.io/v1/namespaces/shop/leases",
        AS_TABLE,
    )
    .await;
    assert_eq!(t["columnDefinitions"][1]["name"], "Created At", "{t}");
    assert_eq!(t["columnDefinitions"][1]["type"], "date", "{t}");
    let created = t["rows"][0]["cells"][1].as_str().unwrap();
    assert!(
        fake_kube::tables::parse_rfc3339(created).is_some(),
        "{created}"
    );

    // A watch as Table: one-row Tables, the columns in the first only.
    let url = format!("http://{}{CMS}?watch=true", fake.addr);
    let req = http::Request::builder()
        .uri(&url)
        .header(
            "authorization",
            format!("Bearer {}", fake_kube::ADMIN_TOKEN),
        )
        .header("accept", AS_TABLE)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let client = h1_client();
    let watch = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let resp = client.request(req).await.expect("watch");
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while lines.len() < 2 {
            let frame = body.frame().await.expect("a frame").expect("body");
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                lines.push(serde_json::from_slice::<Value>(&line).unwrap());
            }
        }
        lines
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, _, _) = call(
        &fake,
        "PATCH",
        &format!("{CMS}/c"),
        "application/merge-patch+json",
        r#"{"data":{"c":"3"}}"#,
    )
    .await;
    assert_eq!(code, 200);
    let lines = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("two watch events")
        .unwrap();
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[0]["object"]["kind"], "Table");
    assert_eq!(
        lines[0]["object"]["columnDefinitions"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(lines[0]["object"]["rows"][0]["cells"][1], 2);
    assert_eq!(lines[1]["type"], "MODIFIED");
    assert_eq!(lines[1]["object"]["columnDefinitions"], json!([]));
    assert_eq!(lines[1]["object"]["rows"][0]["cells"][1], 3);
}

/// `kubectl delete pod`: with a grace period the pod stays, terminating
/// (deletionTimestamp, deletionGracePeriodSeconds; a second delete only
/// shortens it), its endpoint `ready: false, serving: true, terminating:
/// true` and out of the Service's ready endpoints, its ReplicaSet not
/// counting it and making a replacement; `--now` goes after a second,
/// `--force --grace-period=0` at once; a scale-down deletes gracefully too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_pod_terminates_gracefully() {
    let fake = FakeKube::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let dir = TempDir::new("fake-terminating");
    let kubeconfig = dir.path.join("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let mut web = web_deployment("web");
    web["spec"]["replicas"] = json!(3);
    fake.put(APPS, "deployments", "shop", web);
    fake.put(
        "api/v1",
        "services",
        "shop",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
    fake.make_ready("shop", "web").expect("the Deployment");
    let kubectl = |args: &[&str]| -> String {
        let out = Command::new(sluice_tests::kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &dir.path)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pod = |name: &str| -> Option<Value> { fake.get("api/v1", "pods", "shop", name) };
    let endpoint_of = |name: &str| -> Option<Value> {
        let slices: Value = serde_json::from_str(&kubectl(&[
            "get",
            "endpointslices",
            "-n",
            "shop",
            "-o",
            "json",
        ]))
        .unwrap();
        slices["items"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["targetRef"]["name"] == name)
            .map(|e| e["conditions"].clone())
    };
    let names: Vec<String> = fake_kube::controllers::pods_of(&fake, "shop", "web")
        .into_keys()
        .collect();
    assert_eq!(names.len(), 3);
    let (a, b, c) = (&names[0], &names[1], &names[2]);
    assert_eq!(fake.view(|v| v.ready_endpoints("shop", "web", "http")), 3);

    // The default grace period: the pod's terminationGracePeriodSeconds, 30.
    let before = fake_kube::tables::now_seconds();
    kubectl(&["delete", "pod", a, "-n", "shop", "--wait=false"]);
    let held = pod(a).expect("a terminating pod stays");
    assert_eq!(held["metadata"]["deletionGracePeriodSeconds"], 30);
    let at =
        fake_kube::tables::parse_rfc3339(held["metadata"]["deletionTimestamp"].as_str().unwrap())
            .unwrap();
    assert!(
        (before + 29..=before + 32).contains(&at),
        "{at} vs {before}"
    );
    until("the endpoint is terminating", || {
        fake.view(|v| v.ready_endpoints("shop", "web", "http")) == 2
    })
    .await;
    assert_eq!(
        endpoint_of(a),
        Some(json!({"ready": false, "serving": true, "terminating": true}))
    );
    let printed = kubectl(&["get", "pod", a, "-n", "shop"]);
    assert_eq!(
        printed_tables(&printed)[0][0]["STATUS"],
        "Terminating",
        "{printed}"
    );
    // The ReplicaSet does not count it: a replacement comes.
    until("a replacement pod", || {
        fake_kube::controllers::pods_of(&fake, "shop", "web").len() == 3 && pod(a).is_some()
    })
    .await;
    let rs_name = fake
        .names(APPS, "replicasets", "shop")
        .pop()
        .expect("a ReplicaSet");
    until("the ReplicaSet counts three running pods", || {
        fake.get(APPS, "replicasets", "shop", &rs_name).unwrap()["status"]["replicas"] == 3
    })
    .await;
    // A second delete shortens the period, never lengthens it.
    kubectl(&[
        "delete",
        "pod",
        a,
        "-n",
        "shop",
        "--wait=false",
        "--grace-period=20",
    ]);
    assert_eq!(
        pod(a).unwrap()["metadata"]["deletionGracePeriodSeconds"],
        20
    );
    kubectl(&[
        "delete",
        "pod",
        a,
        "-n",
        "shop",
        "--wait=false",
        "--grace-period=60",
    ]);
    assert_eq!(
        pod(a).unwrap()["metadata"]["deletionGracePeriodSeconds"],
        20
    );
    // The kubelet is done early when a test says so.
    fake.finish_terminating("shop", a);
    assert!(pod(a).is_none());
    until("the endpoint is gone", || endpoint_of(a).is_none()).await;

    // --now: one second, then gone (kubectl waits for it).
    let started = Instant::now();
    kubectl(&["delete", "pod", b, "-n", "shop", "--now"]);
    assert!(pod(b).is_none());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // --force --grace-period=0: at once.
    kubectl(&[
        "delete",
        "pod",
        c,
        "-n",
        "shop",
        "--force",
        "--grace-period=0",
    ]);
    assert!(pod(c).is_none());

    // A scale-down deletes with the pod's grace period too.
    fake.make_ready("shop", "web").expect("the Deployment");
    kubectl(&["scale", "deploy", "web", "-n", "shop", "--replicas", "1"]);
    until("two pods terminating", || {
        fake.view(|v| {
            v.list("api/v1", "pods", "shop")
                .iter()
                .filter(|p| p["metadata"]["deletionGracePeriodSeconds"] == 30)
                .count()
                == 2
        })
    })
    .await;
    until("the Deployment reports one replica", || {
        let d = fake.get(APPS, "deployments", "shop", "web").unwrap();
        d["status"]["replicas"] == 1 && d["status"]["readyReplicas"] == 1
    })
    .await;
    assert_eq!(fake.view(|v| v.ready_endpoints("shop", "web", "http")), 1);
    assert_eq!(fake.names("api/v1", "pods", "shop").len(), 3);
}

/// `minReadySeconds`: a ready pod is available only after it has been ready
/// that long (READY 2/2 but AVAILABLE 0 at first, as `kubectl get`
/// prints), and a rolling update with `maxUnavailable: 0` waits for it
/// before it takes an old pod away; `kubectl rollout history` shows each
/// revision's `kubernetes.io/change-cause`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ready_seconds_delays_availability_and_history_shows_change_causes() {
    let fake = FakeKube::start_with(Options {
        tls: true,
        termination_cap: Some(Duration::ZERO),
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let dir = TempDir::new("fake-min-ready");
    let kubeconfig = dir.path.join("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let kubectl = |args: &[&str]| -> String {
        let out = Command::new(sluice_tests::kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &dir.path)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut web = web_deployment("web");
    web["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "first release"});
    web["spec"]["minReadySeconds"] = json!(2);
    web["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    let file = dir.path.join("web.json");
    std::fs::write(&file, web.to_string()).unwrap();
    kubectl(&["create", "-n", "shop", "-f", file.to_str().unwrap()]);
    // Ready conditions carry whole-second times, as on a real cluster, so
    // a pod made ready at T is available at floor(T) + 2 s: more than 1 s
    // after T, never the full 2 s for sure.
    let started = Instant::now();
    fake.make_ready("shop", "web");
    let printed = kubectl(&["get", "deploy", "web", "-n", "shop"]);
    let row = &printed_tables(&printed)[0][0];
    assert_eq!(
        (row["READY"].as_str(), row["AVAILABLE"].as_str()),
        ("2/2", "0"),
        "ready but not yet available: {printed}"
    );
    until("available after minReadySeconds", || {
        fake.get(APPS, "deployments", "shop", "web").unwrap()["status"]["availableReplicas"] == 2
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "available after {:?}",
        started.elapsed()
    );
    let printed = kubectl(&["get", "deploy", "web", "-n", "shop"]);
    assert_eq!(
        printed_tables(&printed)[0][0]["AVAILABLE"],
        "2",
        "{printed}"
    );

    // A new template: the surge pod is made ready at once, yet no old pod
    // goes until it has been ready two seconds.
    kubectl(&["set", "image", "deploy/web", "-n", "shop", "app=app:2"]);
    kubectl(&[
        "annotate",
        "deploy",
        "web",
        "-n",
        "shop",
        "--overwrite",
        "kubernetes.io/change-cause=image app:2",
    ]);
    let old_rs = |fake: &FakeKube| -> i64 {
        fake.view(|v| {
            v.list(APPS, "replicasets", "shop")
                .iter()
                .filter(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"] == "app:1")
                .map(|rs| rs["spec"]["replicas"].as_i64().unwrap())
                .sum()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first_ready: Option<Instant> = None;
    loop {
        let pods = fake_kube::controllers::pods_of(&fake, "shop", "web");
        let new_ready = pods.values().any(|p| {
            p["spec"]["containers"][0]["image"] == "app:2"
                && p["status"]["conditions"][0]["status"] == "True"
        });
        if !new_ready {
            for p in pods.values() {
                if p["spec"]["containers"][0]["image"] == "app:2" {
                    let mut p = p.clone();
                    p["status"]["conditions"] = json!([
                        {"type": "Ready", "status": "True", "lastTransitionTime": fake_kube::now_rfc3339()},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": fake_kube::now_rfc3339()},
                    ]);
                    fake.put("api/v1", "pods", "shop", p);
                    first_ready.get_or_insert_with(Instant::now);
                }
            }
        }
        if old_rs(&fake) < 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the old ReplicaSet never shrank");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = first_ready.expect("a new pod was made ready").elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "an old pod went {waited:?} after the new one was ready"
    );
    fake.make_ready("shop", "web");
    until("the second rollout completes", || {
        let d = fake.get(APPS, "deployments", "shop", "web").unwrap();
        d["status"]["availableReplicas"] == 2
            && d["status"]["updatedReplicas"] == 2
            && old_rs(&fake) == 0
    })
    .await;
    let history = kubectl(&["rollout", "history", "deploy/web", "-n", "shop"]);
    let rows = &printed_tables(history.split_once('\n').unwrap().1)[0];
    let causes: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["REVISION"].as_str(), r["CHANGE-CAUSE"].as_str()))
        .collect();
    assert_eq!(
        causes,
        [("1", "first release"), ("2", "image app:2")],
        "{history}"
    );
}

/// A ConfigMap's manifest (kubectl's generators would send protobuf).
fn configmap_file(api: &ApiServer, name: &str) -> String {
    api.file(
        &format!("{name}.yaml"),
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  a: b\n"),
    )
}

/// The list's resourceVersion: the store's, which any write moves.
fn store_version(api: &ApiServer) -> String {
    let list: Value =
        serde_json::from_str(&api.ok(&["get", "--raw", "/api/v1/configmaps"])).unwrap();
    list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list has a resourceVersion")
        .to_string()
}

/// `--dry-run=server` and `kubectl diff` (`dryRun=All`): the server
/// validates, admits and answers with the object it would store, but
/// stores nothing: no object is created, changed or deleted, and the
/// resourceVersion does not move.
#[test]
fn kubectl_server_dry_runs_and_diff_change_nothing() {
    let api = ApiServer::start("50ms");
    let cm = |name: &str, value: &str| {
        api.file(
            &format!("{name}-{value}.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: '{value}'\n"),
        )
    };
    api.ok(&["apply", "-f", &cm("base", "1")]);
    let before = api.json(&["configmap", "base"]);
    let version = store_version(&api);

    let out = api.ok(&[
        "apply",
        "--dry-run=server",
        "-f",
        &cm("fresh", "1"),
        "-o",
        "json",
    ]);
    let would: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(would["metadata"]["name"], "fresh", "{would}");
    assert!(would["metadata"]["uid"].is_string(), "{would}");
    let (ok, _, err) = api.kubectl(&["get", "configmap", "fresh"]);
    assert!(!ok && err.contains("NotFound"), "{err}");

    let out = api.ok(&[
        "apply",
        "--dry-run=server",
        "-f",
        &cm("base", "2"),
        "-o",
        "json",
    ]);
    let would: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(would["data"]["v"], "2", "the answer is the changed object");
    assert_eq!(
        would["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "{would}"
    );
    api.ok(&[
        "patch",
        "configmap",
        "base",
        "--dry-run=server",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"v":"3"}}"#,
    ]);
    api.ok(&["create", "-f", &cm("created", "1"), "--dry-run=server"]);
    let out = api.ok(&["delete", "configmap", "base", "--dry-run=server"]);
    assert!(out.contains("server dry run"), "{out}");
    // kubectl diff asks for a dry-run patch and shows the difference.
    let (ok, out, err) = api.kubectl(&["diff", "-f", &cm("base", "4")]);
    assert!(!ok && out.contains("+  v: \"4\""), "{out} {err}");
    // Validation still runs.
    let bad = api.file(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    );
    let (ok, _, err) = api.kubectl(&["create", "-f", &bad, "--dry-run=server"]);
    assert!(
        !ok && err.contains("is invalid: metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );

    assert_eq!(api.json(&["configmap", "base"]), before, "base unchanged");
    let (ok, _, err) = api.kubectl(&["get", "configmap", "created"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    assert_eq!(store_version(&api), version, "nothing was written");
    // The next real write is the next version, as if no dry run happened.
    api.ok(&["apply", "-f", &cm("base", "5")]);
    let after: u64 = store_version(&api).parse().unwrap();
    assert_eq!(after, version.parse::<u64>().unwrap() + 1);
}

/// Selectors a real API server cannot parse, or fields it cannot select
/// by, are 400 BadRequest with its message, never an empty list.
#[test]
fn kubectl_get_with_a_bad_selector_is_a_bad_request() {
    let api = ApiServer::start("50ms");
    api.ok(&["create", "-f", &configmap_file(&api, "web")]);
    api.ok(&["label", "configmap", "web", "tier=front"]);
    let refused = |args: &[&str], wanted: &str| {
        let mut all = vec!["get", "configmaps"];
        all.extend_from_slice(args);
        let (ok, out, err) = api.kubectl(&all);
        assert!(!ok, "{args:?} was served: {out}");
        assert!(
            err.contains("BadRequest") && err.contains(wanted),
            "{args:?}: {err}"
        );
    };
    refused(
        &["-l", "tier=("],
        "unable to parse requirement: found '(', expected: identifier",
    );
    refused(
        &["-l", "Tier In (a)"],
        "unable to parse requirement: found 'In', expected: in, notin",
    );
    refused(&["-l", "tier=front,"], "expected: identifier after ','");
    refused(
        &["--field-selector", "foo=bar"],
        "field label \"foo\" not supported for \"ConfigMap\"",
    );
    refused(
        &["--field-selector", "status.phase=Running"],
        "field label \"status.phase\" not supported for \"ConfigMap\"",
    );
    refused(
        &["--field-selector", "metadata.name"],
        "can't understand 'metadata.name'",
    );
    // Watches check them too.
    refused(&["-w", "-l", "tier=("], "unable to parse requirement");
    let (ok, _, err) = api.kubectl(&["get", "deployments", "--field-selector", "spec.replicas=1"]);
    assert!(
        !ok && err.contains("\"spec.replicas\" is not a known field selector"),
        "{err}"
    );
    // What a real server takes, it serves.
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["configmaps"];
        all.extend_from_slice(args);
        api.json(&all)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&["-l", "tier in (front,back),!gone"]), ["web"]);
    assert_eq!(names(&["-l", "tier notin (front)"]), Vec::<String>::new());
    assert_eq!(names(&["--field-selector", "metadata.name==web"]), ["web"]);
    assert_eq!(
        names(&["--field-selector", "metadata.namespace!=default"]),
        Vec::<String>::new()
    );
    let (ok, _, err) = api.kubectl(&["get", "pods", "--field-selector", "status.phase=Running"]);
    assert!(ok, "pods are selectable by phase: {err}");
}

/// Reads `kubectl get -w --output-watch-events -o json` events.
fn watch_events(mut child: Child) -> (Child, std::sync::mpsc::Receiver<Value>) {
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for e in serde_json::Deserializer::from_reader(&mut stdout).into_iter::<Value>() {
            let Ok(e) = e else { return };
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// A watch with a label selector: an object relabelled out of the
/// selection is DELETED for it, relabelled back in is ADDED, as the API
/// server's watch cache converts them; changes outside it are not seen.
#[test]
fn a_selected_watch_sees_objects_leave_and_enter_the_selection() {
    let api = ApiServer::start("50ms");
    api.ok(&["create", "-f", &configmap_file(&api, "web")]);
    api.ok(&["label", "configmap", "web", "tier=front"]);
    let version = store_version(&api);
    let child = api
        .command(&[
            "get",
            "configmaps",
            "-l",
            "tier=front",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kubectl get -w");
    let (mut child, rx) = watch_events(child);
    let next = || {
        let e = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a watch event within 10 s");
        (
            e["type"].as_str().unwrap().to_string(),
            e["object"]["metadata"]["labels"]["tier"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    };
    assert_eq!(next(), ("ADDED".into(), "front".into()));
    api.ok(&["label", "configmap", "web", "tier=back", "--overwrite"]);
    assert_eq!(next(), ("DELETED".into(), "back".into()), "left");
    api.ok(&["annotate", "configmap", "web", "unseen=1"]);
    api.ok(&["label", "configmap", "web", "tier=front", "--overwrite"]);
    assert_eq!(next(), ("ADDED".into(), "front".into()), "entered");
    api.ok(&["annotate", "configmap", "web", "seen=1"]);
    assert_eq!(next(), ("MODIFIED".into(), "front".into()));
    let _ = child.kill();
    let _ = child.wait();
    // A watch resumed from before the changes replays them the same way.
    let child = api
        .command(&[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/default/configmaps?watch=true&labelSelector=tier%3Dfront&resourceVersion={version}&timeoutSeconds=2"
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kubectl get --raw");
    let (mut child, rx) = watch_events(child);
    let types: Vec<String> = rx
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(types, ["DELETED", "ADDED", "MODIFIED"]);
    let _ = child.kill();
    let _ = child.wait();
}

/// DELETE with preconditions (`kubectl delete --raw` with DeleteOptions):
/// a resourceVersion that is not the object's is 409 Conflict, as a uid.
#[test]
fn a_delete_whose_resource_version_precondition_fails_is_a_conflict() {
    let api = ApiServer::start("50ms");
    api.ok(&["create", "-f", &configmap_file(&api, "web")]);
    let live = api.json(&["configmap", "web"]);
    let rv = live["metadata"]["resourceVersion"].as_str().unwrap();
    let options = |rv: &str| {
        api.file(
            &format!("options-{rv}.json"),
            &json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": rv}})
                .to_string(),
        )
    };
    let path = "/api/v1/namespaces/default/configmaps/web";
    let (ok, _, err) = api.kubectl(&["delete", "--raw", path, "-f", &options("1")]);
    assert!(!ok, "deleted despite a stale resourceVersion");
    assert!(
        err.contains(&format!(
            "Precondition failed: ResourceVersion in precondition: 1, ResourceVersion in object meta: {rv}"
        )),
        "{err}"
    );
    assert_eq!(api.json(&["configmap", "web"]), live, "still there");
    api.ok(&["delete", "--raw", path, "-f", &options(rv)]);
    let (ok, _, err) = api.kubectl(&["get", "configmap", "web"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
}

/// An object its finalizers hold is marked as deleting as the API server
/// does (`markAsDeleting`: a grace period of zero, a new generation for a
/// kind that has one, none for a ConfigMap), and takes no new finalizer
/// while it is; removing the last one removes it.
#[test]
fn a_deleting_object_takes_no_new_finalizers() {
    let api = ApiServer::start("50ms");
    let file = api.file(
        "held.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/a]\ndata:\n  v: '1'\n",
    );
    api.ok(&["create", "-f", &file]);
    api.ok(&["create", "deployment", "kept", "--image=nginx"]);
    api.ok(&[
        "patch",
        "deployment",
        "kept",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/a"]}}"#,
    ]);
    api.ok(&["delete", "configmap", "held", "--wait=false"]);
    api.ok(&["delete", "deployment", "kept", "--wait=false"]);
    let held = api.json(&["configmap", "held"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    assert_eq!(held["metadata"]["deletionGracePeriodSeconds"], 0, "{held}");
    assert!(held["metadata"].get("generation").is_none(), "{held}");
    let kept = api.json(&["deployment", "kept"]);
    assert!(kept["metadata"]["deletionTimestamp"].is_string(), "{kept}");
    assert_eq!(kept["metadata"]["generation"], 2, "{kept}");
    let (ok, _, err) = api.kubectl(&[
        "patch",
        "configmap",
        "held",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/a","example.com/b"]}}"#,
    ]);
    assert!(!ok, "a new finalizer was added to a deleting object");
    assert!(
        err.contains("is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/b\"}"),
        "{err}"
    );
    // Other changes are still taken; the delete finishes with the last
    // finalizer.
    api.ok(&["label", "configmap", "held", "still=here"]);
    api.ok(&[
        "patch",
        "configmap",
        "held",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let (ok, _, err) = api.kubectl(&["get", "configmap", "held"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
}

/// `metadata.generation` is kept only by the kinds whose API server
/// strategy keeps one (a spec its controllers observe): a Deployment starts
/// at 1 and counts changes of its spec and annotations, while a ConfigMap, Secret, Role,
/// RoleBinding or ServiceAccount has none, on create or after any update,
/// and an update cannot give it one.
#[test]
fn only_kinds_with_a_spec_have_a_generation() {
    let api = ApiServer::start("50ms");
    let manifests = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\ndata:\n  v: '1'\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: plain\nstringData:\n  v: '1'\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: plain\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: plain\n\
         rules:\n- apiGroups: ['']\n  resources: [configmaps]\n  verbs: [get]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: plain\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: plain\n\
         subjects:\n- kind: ServiceAccount\n  name: plain\n";
    api.ok(&["apply", "-f", &api.file("plain.yaml", manifests)]);
    api.ok(&["create", "deployment", "web", "--image=nginx"]);
    let kinds = [
        "configmap",
        "secret",
        "serviceaccount",
        "role",
        "rolebinding",
    ];
    for kind in kinds {
        let object = api.json(&[kind, "plain"]);
        assert!(object["metadata"].get("generation").is_none(), "{object}");
    }
    assert_eq!(
        api.json(&["deployment", "web"])["metadata"]["generation"],
        1
    );
    // Changes, by label, by apply and by a patch that tries to set one.
    for kind in kinds {
        api.ok(&["label", kind, "plain", "changed=yes"]);
        api.ok(&[
            "patch",
            kind,
            "plain",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"generation":7}}"#,
        ]);
    }
    let changed = api.file("changed.yaml", &manifests.replace("'1'", "'2'"));
    api.ok(&["apply", "-f", &changed]);
    for kind in kinds {
        let object = api.json(&[kind, "plain"]);
        assert!(object["metadata"].get("generation").is_none(), "{object}");
        assert_eq!(object["metadata"]["labels"]["changed"], "yes", "{object}");
    }
    api.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    let generation = || api.json(&["deployment", "web"])["metadata"]["generation"].clone();
    assert_eq!(generation(), 2);
    // A Deployment's annotations are copied to its ReplicaSets, so a
    // change of them is a new generation too; a label is not.
    api.ok(&["label", "deployment", "web", "team=a"]);
    assert_eq!(generation(), 2);
    api.ok(&["annotate", "deployment", "web", "note=x"]);
    assert_eq!(generation(), 3);
    api.ok(&["annotate", "configmap", "plain", "note=x"]);
    let plain = api.json(&["configmap", "plain"]);
    assert!(plain["metadata"].get("generation").is_none(), "{plain}");
}

/// `kubectl create configmap|secret|deployment|namespace|service` send the
/// object in protobuf, as kubectl's generators do for built-in kinds; the
/// server reads it as a real one does, and stores what was asked.
#[test]
fn kubectl_create_generators_work_as_against_a_real_server() {
    let api = ApiServer::start("50ms");
    api.ok(&["create", "namespace", "shop"]);
    api.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
        "--from-literal=level=3",
    ]);
    let cm = api.json(&["configmap", "settings"]);
    assert_eq!(
        cm["data"],
        serde_json::json!({"mode": "fast", "level": "3"}),
        "{cm}"
    );
    api.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=hunter2",
    ]);
    let secret = api.json(&["secret", "creds"]);
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==", "{secret}");
    assert_eq!(secret["type"], "Opaque", "{secret}");
    api.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--port=8080",
        "--replicas=3",
    ]);
    let d = api.json(&["deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 3, "{d}");
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web", "{d}");
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27", "{d}");
    assert_eq!(container["ports"][0]["containerPort"], 8080, "{d}");
    api.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let svc = api.json(&["service", "web"]);
    assert_eq!(
        svc["spec"]["ports"][0],
        serde_json::json!({"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}),
        "{svc}"
    );
    // Refused as a real server refuses it, and nothing is stored.
    let (ok, _, err) = api.kubectl(&["create", "deployment", "Bad_Name", "--image=x"]);
    assert!(!ok && err.contains("Invalid"), "{err}");
}

/// The install the docs give, `kubectl apply -k deploy/operator`, goes
/// through against the fake-apiserver binary, which starts with the
/// operator's RBAC in place: a Role or ClusterRole carries no `subjects`
/// (a real server never has the field there, and kubectl's strict
/// decoding refuses it), and applying the same objects again changes
/// nothing.
#[test]
fn the_operator_install_applies_over_the_preloaded_rbac() {
    let api = ApiServer::start("0s");
    let dir = workspace_root().join("deploy/operator");
    let dir = dir.to_str().expect("a UTF-8 path");
    for kind in ["roles", "clusterroles"] {
        let list = api.json(&[kind, "-A"]);
        for item in list["items"].as_array().expect("items") {
            assert!(
                item.get("subjects").is_none(),
                "{kind} with subjects: {item}"
            );
        }
    }
    let (ok, out, err) = api.kubectl(&["apply", "-k", dir]);
    assert!(ok, "kubectl apply -k deploy/operator: {err}\n{out}");
    let (ok, out, err) = api.kubectl(&["apply", "-k", dir]);
    assert!(ok, "again: {err}");
    assert!(!out.contains("configured"), "a second apply changed: {out}");
}
