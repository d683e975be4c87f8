//! The controllers a cluster runs, minimal but real enough that "the
//! Service always has ready endpoints" can be checked:
//!
//! - **Deployments** get Pods of their template (labelled with its
//!   `pod-template-hash`, owned by the Deployment). When the template
//!   changes, Pods of the new template are created, and the old ones are
//!   deleted once the new ones are ready (a rolling update with full surge,
//!   never fewer ready pods). The status reports `replicas`,
//!   `updatedReplicas`, `readyReplicas`, `availableReplicas` and
//!   `observedGeneration`.
//! - **Pods** (the kubelet) get an IP, and become ready after the
//!   configured delay, or when a test calls [`super::FakeKube::make_ready`].
//!   In a namespace labelled `pod-security.kubernetes.io/enforce: restricted`
//!   a pod that breaks the restricted profile is refused at admission, and
//!   its Deployment reports `ReplicaFailure`.
//! - **EndpointSlices** list a Service's pods (by selector) with their
//!   readiness, and its ports resolved against the pods' container ports
//!   (by number, or by name).
//! - **Garbage collection**: an object whose every owner is gone is deleted,
//!   a little later, in the background.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{FakeKube, Key, Readiness, Store, View, validate};

const APPS: &str = "apis/apps/v1";
const CORE: &str = "api/v1";
const DISCOVERY: &str = "apis/discovery.k8s.io/v1";

/// Runs the controllers until the process ends.
pub async fn run(fake: FakeKube) {
    loop {
        tokio::select! {
            _ = fake.inner.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        reconcile(&fake);
    }
}

fn template_hash(template: &Value) -> String {
    let digest = Sha256::digest(template.to_string().as_bytes());
    digest
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..10]
        .to_string()
}

fn owned_by(object: &Value, uid: &Value) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// One pass of every controller.
pub fn reconcile(fake: &FakeKube) {
    let mut store = fake.inner.store.lock().expect("store");
    collect_garbage(fake, &mut store);
    kubelet(fake, &mut store);
    for (key, d) in all_of(&store, APPS, "deployments") {
        deployment(fake, &mut store, &key.1, &d);
    }
    for (key, s) in all_of(&store, CORE, "services") {
        endpoints(fake, &mut store, &key.1, &s);
    }
}

/// Every object of one kind in every namespace, copied out of the store
/// (the controllers change the store while they walk them).
fn all_of(store: &Store, prefix: &str, plural: &str) -> Vec<(Key, Value)> {
    store
        .objects
        .iter()
        .filter(|((k, _, _), _)| k.0 == prefix && k.1 == plural)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn collect_garbage(fake: &FakeKube, store: &mut Store) {
    let uids: std::collections::BTreeSet<String> = store
        .objects
        .values()
        .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_string))
        .collect();
    // Owners deleted in the foreground: their dependents go first, then the
    // owner loses its `foregroundDeletion` finalizer.
    let going: std::collections::BTreeSet<String> = store
        .objects
        .values()
        .filter(|o| {
            o["metadata"].get("deletionTimestamp").is_some()
                && o["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!(super::FOREGROUND)))
        })
        .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_string))
        .collect();
    for uid in &going {
        if store.objects.values().any(|o| super::owned_by(o, uid)) {
            continue;
        }
        let Some((key, mut owner)) = store
            .objects
            .iter()
            .find(|(_, o)| o["metadata"]["uid"] == uid.as_str())
            .map(|(k, o)| (k.clone(), o.clone()))
        else {
            continue;
        };
        if let Some(f) = owner["metadata"]["finalizers"].as_array_mut() {
            f.retain(|x| x != super::FOREGROUND);
        }
        let rest = owner["metadata"]["finalizers"]
            .as_array()
            .map_or(0, Vec::len);
        if rest == 0 {
            fake.remove(store, &key);
        } else {
            store.rv += 1;
            owner["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            store.objects.insert(key.clone(), owner.clone());
            fake.emit(store, key.0.clone(), &key.1, "MODIFIED", owner);
        }
    }
    let orphans: Vec<Key> = store
        .objects
        .iter()
        .filter(|(_, o)| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    !refs.is_empty()
                        && refs.iter().all(|r| {
                            r["uid"]
                                .as_str()
                                .is_none_or(|u| !uids.contains(u) || going.contains(u))
                        })
                })
        })
        .map(|(k, _)| k.clone())
        .collect();
    let mut seen = fake.inner.orphans.lock().expect("orphans");
    seen.retain(|k, _| orphans.contains(k));
    let now = Instant::now();
    for key in orphans {
        let first = *seen.entry(key.clone()).or_insert(now);
        if now.duration_since(first) >= fake.inner.options.gc_delay {
            seen.remove(&key);
            fake.delete_key(store, &key);
        }
    }
}

fn set_ready(pod: &mut Value, ready: bool) {
    let status = if ready { "True" } else { "False" };
    pod["status"]["phase"] = json!("Running");
    pod["status"]["conditions"] = json!([
        {"type": "Ready", "status": status},
        {"type": "ContainersReady", "status": status},
    ]);
}

/// Delayed readiness.
fn kubelet(fake: &FakeKube, store: &mut Store) {
    let Readiness::After(delay) = fake.inner.options.readiness else {
        return;
    };
    let born = fake.inner.pod_born.lock().expect("pods").clone();
    let due: Vec<(Key, Value)> = store
        .objects
        .iter()
        .filter(|((k, _, _), p)| {
            k.1 == "pods"
                && !is_ready(p)
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["metadata"]["uid"]
                    .as_str()
                    .and_then(|u| born.get(u))
                    .is_some_and(|t| t.elapsed() >= delay)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, mut pod) in due {
        set_ready(&mut pod, true);
        let old = store.objects.get(&key).cloned();
        fake.commit(store, CORE, "pods", &key.1, pod, old.as_ref());
    }
}

/// The restricted Pod Security profile's main rules, for a namespace that
/// enforces it. None when the pod may run.
pub fn pod_security_problem(view: &View<'_>, ns: &str, pod: &Value) -> Option<String> {
    let namespace = view.get(CORE, "namespaces", "", ns)?;
    if namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] != "restricted" {
        return None;
    }
    let spec = &pod["spec"];
    let mut problems = Vec::new();
    for flag in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[flag] == true {
            problems.push(format!("host namespaces ({flag}=true)"));
        }
    }
    if spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v.get("hostPath").is_some())
    {
        problems.push("restricted volume types (hostPath)".into());
    }
    let pod_non_root = spec["securityContext"]["runAsNonRoot"] == true;
    let pod_seccomp = spec["securityContext"]["seccompProfile"]["type"].as_str();
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            let sc = &c["securityContext"];
            if sc["privileged"] == true {
                problems.push(format!(
                    "privileged (container \"{name}\" must not set securityContext.privileged=true)"
                ));
            }
            if sc["allowPrivilegeEscalation"] != false {
                problems.push(format!("allowPrivilegeEscalation != false (container \"{name}\" must set securityContext.allowPrivilegeEscalation=false)"));
            }
            let drops_all = sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            if !drops_all {
                problems.push(format!("unrestricted capabilities (container \"{name}\" must set securityContext.capabilities.drop=[\"ALL\"])"));
            }
            if !(pod_non_root || sc["runAsNonRoot"] == true) {
                problems.push(format!("runAsNonRoot != true (container \"{name}\" must set securityContext.runAsNonRoot=true)"));
            }
            let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                problems.push(format!("seccompProfile (container \"{name}\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"));
            }
        }
    }
    (!problems.is_empty()).then(|| {
        format!(
            "violates PodSecurity \"restricted:latest\": {}",
            problems.join(", ")
        )
    })
}

fn deployment(fake: &FakeKube, store: &mut Store, ns: &str, d: &Value) {
    if d["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    let uid = d["metadata"]["uid"].clone();
    let name = d["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let template = &d["spec"]["template"];
    let hash = template_hash(template);
    let pods: Vec<(Key, Value)> = store
        .objects
        .iter()
        .filter(|((k, n, _), p)| k.1 == "pods" && n == ns && owned_by(p, &uid))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let current: Vec<&(Key, Value)> = pods
        .iter()
        .filter(|(_, p)| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
        .collect();
    let mut failure = None;
    // Scale the current template to the desired count.
    if current.len() < desired {
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["pod-template-hash"] = json!(hash);
        for i in 0..(desired - current.len()) {
            let mut n = current.len() + i;
            let pod_name = loop {
                let candidate = format!("{name}-{hash}-{n}");
                if !store
                    .objects
                    .contains_key(&FakeKube::key(CORE, "pods", ns, &candidate))
                {
                    break candidate;
                }
                n += 1;
            };
            store.next_ip += 1;
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": labels, "annotations": template["metadata"]["annotations"],
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": template["spec"],
                "status": {"podIP": format!("10.244.{}.{}", store.next_ip / 250, store.next_ip % 250 + 1)},
            });
            if pod["metadata"]["annotations"].is_null() {
                pod["metadata"]
                    .as_object_mut()
                    .expect("metadata")
                    .remove("annotations");
            }
            if let Some(problem) = pod_security_problem(&View { store }, ns, &pod) {
                failure = Some(format!("pods \"{pod_name}\" is forbidden: {problem}"));
                break;
            }
            set_ready(&mut pod, false);
            let stored = fake.commit(store, CORE, "pods", ns, pod, None);
            if let Some(u) = stored["metadata"]["uid"].as_str() {
                fake.inner
                    .pod_born
                    .lock()
                    .expect("pods")
                    .insert(u.to_string(), Instant::now());
            }
        }
    } else if current.len() > desired {
        for (key, _) in current.iter().skip(desired) {
            fake.remove(store, key);
        }
    }
    // Old templates go once the current one is fully ready.
    let ready_current = store
        .objects
        .iter()
        .filter(|((k, n, _), p)| {
            k.1 == "pods"
                && n == ns
                && owned_by(p, &uid)
                && p["metadata"]["labels"]["pod-template-hash"] == hash.as_str()
                && is_ready(p)
        })
        .count();
    if ready_current >= desired {
        for (key, p) in &pods {
            if p["metadata"]["labels"]["pod-template-hash"] != hash.as_str() {
                fake.remove(store, key);
            }
        }
    }
    // Status, from the pods as they are now.
    let now: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, n, _), p)| k.1 == "pods" && n == ns && owned_by(p, &uid))
        .map(|(_, v)| v.clone())
        .collect();
    let updated = now
        .iter()
        .filter(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
        .count();
    let ready = now.iter().filter(|p| is_ready(p)).count();
    let mut status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": now.len(),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": now.len().saturating_sub(ready),
    });
    if let Some(message) = failure {
        status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}]);
    }
    let key = FakeKube::key(APPS, "deployments", ns, &name);
    let Some(latest) = store.objects.get(&key).cloned() else {
        return;
    };
    if latest["status"] != status {
        let mut next = latest.clone();
        next["status"] = status;
        fake.commit(store, APPS, "deployments", ns, next, Some(&latest));
    }
}

fn resolve_port(target: &Value, pod: &Value) -> Option<i64> {
    match target {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => None,
    }
}

fn endpoints(fake: &FakeKube, store: &mut Store, ns: &str, svc: &Value) {
    let name = svc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let slice_name = format!("{name}-fake");
    let key = FakeKube::key(DISCOVERY, "endpointslices", ns, &slice_name);
    let selector = &svc["spec"]["selector"];
    if !selector.is_object() || selector.as_object().is_some_and(|m| m.is_empty()) {
        return;
    }
    let sel = json!({"matchLabels": selector});
    let pods: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, n, _), p)| {
            k.1 == "pods"
                && n == ns
                && validate::label_selector_matches(&sel, &p["metadata"]["labels"])
        })
        .map(|(_, v)| v.clone())
        .collect();
    let ports: Vec<Value> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let target = if p["targetPort"].is_null() {
                &p["port"]
            } else {
                &p["targetPort"]
            };
            let resolved = pods.iter().find_map(|pod| resolve_port(target, pod));
            json!({
                "name": p["name"].as_str().unwrap_or(""),
                "protocol": p["protocol"].as_str().unwrap_or("TCP"),
                "port": resolved,
            })
        })
        .collect();
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            let terminating = p["metadata"]["deletionTimestamp"].is_string();
            json!({
                "addresses": [p["status"]["podIP"]],
                "conditions": {"ready": is_ready(p) && !terminating, "serving": is_ready(p), "terminating": terminating},
                "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns, "uid": p["metadata"]["uid"]},
            })
        })
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name, "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    });
    let existing = store.objects.get(&key).cloned();
    let same = existing
        .as_ref()
        .is_some_and(|e| e["endpoints"] == slice["endpoints"] && e["ports"] == slice["ports"]);
    if !same {
        fake.commit(
            store,
            DISCOVERY,
            "endpointslices",
            ns,
            slice,
            existing.as_ref(),
        );
    }
}

/// Marks every pod of a Deployment's current template ready now.
pub fn make_ready(fake: &FakeKube, ns: &str, name: &str) -> Option<Value> {
    reconcile(fake);
    {
        let mut store = fake.inner.store.lock().expect("store");
        let d = store
            .objects
            .get(&FakeKube::key(APPS, "deployments", ns, name))?
            .clone();
        let hash = template_hash(&d["spec"]["template"]);
        let uid = d["metadata"]["uid"].clone();
        let pods: Vec<(Key, Value)> = store
            .objects
            .iter()
            .filter(|((k, n, _), p)| {
                k.1 == "pods"
                    && n == ns
                    && owned_by(p, &uid)
                    && p["metadata"]["labels"]["pod-template-hash"] == hash.as_str()
                    && !is_ready(p)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, mut pod) in pods {
            let old = pod.clone();
            set_ready(&mut pod, true);
            fake.commit(&mut store, CORE, "pods", &key.1, pod, Some(&old));
        }
    }
    reconcile(fake);
    fake.get(APPS, "deployments", ns, name)
}

/// Pods by name of a Deployment (tests inspect them).
pub fn pods_of(fake: &FakeKube, ns: &str, deployment: &str) -> BTreeMap<String, Value> {
    let Some(d) = fake.get(APPS, "deployments", ns, deployment) else {
        return BTreeMap::new();
    };
    let uid = d["metadata"]["uid"].clone();
    fake.view(|v| {
        v.list(CORE, "pods", ns)
            .into_iter()
            .filter(|p| owned_by(p, &uid))
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p.clone(),
                )
            })
            .collect()
    })
}
