//! The controllers a cluster runs, minimal but real enough that "the
//! Service always has ready endpoints" can be checked:
//!
//! - **Deployments** own one ReplicaSet per pod template, named
//!   `<deployment>-<pod-template-hash>`, the hash on its labels, its
//!   selector and its pods, its revision in `deployment.kubernetes.io/revision`
//!   (a rollback to an older template makes that ReplicaSet the newest
//!   revision). A template change rolls by `spec.strategy`: **RollingUpdate**
//!   grows the new ReplicaSet while the ReplicaSets' replicas stay within
//!   `replicas + maxSurge` and shrinks the old ones (their unavailable pods
//!   first) while the available pods stay at least
//!   `replicas - maxUnavailable` (percents: surge rounds up, unavailability
//!   down; both resolving to zero allows one unavailable, as the real
//!   controller), one or the other per pass; **Recreate** scales every old
//!   ReplicaSet to zero and starts the new one once their pods are gone.
//!   The Deployment's annotations (but its own bookkeeping and
//!   `last-applied-configuration`) are copied onto its current ReplicaSet,
//!   so `kubectl rollout history` shows `kubernetes.io/change-cause`.
//!   Old ReplicaSets beyond `revisionHistoryLimit` are deleted; a paused
//!   Deployment does not roll. The status reports `replicas`,
//!   `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `unavailableReplicas`, `observedGeneration` and the `Available`,
//!   `Progressing` (`NewReplicaSetCreated`, `ReplicaSetUpdated`,
//!   `NewReplicaSetAvailable`) and `ReplicaFailure` conditions. A pod is
//!   available once it has been ready for `minReadySeconds` (whole seconds
//!   from its Ready condition's `lastTransitionTime`); availability, not
//!   readiness, is what `maxUnavailable` and the status count.
//! - **ReplicaSets** own Pods of their template (`<replicaset>-<5 chars>`),
//!   created up to `spec.replicas`; a surplus is deleted not-ready first,
//!   then youngest. Every ReplicaSet deletes before any creates in a pass,
//!   so pods never outnumber the ReplicaSets' replicas.
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

use super::{FakeKube, Key, Readiness, Store, View, termination, validate};

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
    namespaces(fake, &mut store);
    kubelet(fake, &mut store);
    termination::kubelet(fake, &mut store);
    let mut progress = Vec::new();
    for (key, d) in all_of(&store, APPS, "deployments") {
        if let Some(p) = deployment(fake, &mut store, &key.1, &d) {
            progress.push((key, p));
        }
    }
    // Every ReplicaSet deletes its surplus before any creates, so the
    // pods never outnumber the ReplicaSets' sum.
    for create in [false, true] {
        for (key, rs) in all_of(&store, APPS, "replicasets") {
            replica_set(fake, &mut store, &key.1, &rs, create);
        }
    }
    for (key, (new_name, progressed)) in progress {
        if let Some(d) = store.objects.get(&key).cloned() {
            deployment_status(fake, &mut store, &key.1, &d, &new_name, progressed);
        }
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
            fake.emit(store, key.0.clone(), &key.1, "MODIFIED", owner, None);
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

/// The kubelet's report: phase, the Ready and ContainersReady conditions
/// (their `lastTransitionTime` kept while the status stays, so
/// `minReadySeconds` counts from when the pod became ready) and one
/// running container status per container.
/// The namespace controller: a namespace being deleted has everything in
/// it deleted (finalizers and grace periods still hold each object), and
/// goes once it is empty.
fn namespaces(fake: &FakeKube, store: &mut Store) {
    let terminating: Vec<(Key, String)> = all_of(store, CORE, "namespaces")
        .into_iter()
        .filter(|(_, n)| n["metadata"].get("deletionTimestamp").is_some())
        .map(|(k, _)| {
            let name = k.2.clone();
            (k, name)
        })
        .collect();
    for (key, name) in terminating {
        let inside: Vec<(Key, bool)> = store
            .objects
            .iter()
            .filter(|(k, _)| k.1 == name)
            .map(|(k, o)| (k.clone(), o["metadata"].get("deletionTimestamp").is_some()))
            .collect();
        if inside.is_empty() {
            // Its own finalizers (not the spec's `kubernetes`) still hold it.
            let held = store.objects.get(&key).is_some_and(|n| {
                n["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
            });
            if !held {
                fake.remove(store, &key);
            }
            continue;
        }
        for (k, deleting) in inside {
            if !deleting {
                fake.delete_key(store, &k);
            }
        }
    }
}

fn set_ready(pod: &mut Value, ready: bool) {
    let status = if ready { "True" } else { "False" };
    let since = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready" && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map(str::to_string)
        .unwrap_or_else(super::now_rfc3339);
    pod["status"]["phase"] = json!("Running");
    pod["status"]["conditions"] = json!([
        {"type": "Ready", "status": status, "lastTransitionTime": since},
        {"type": "ContainersReady", "status": status, "lastTransitionTime": since},
    ]);
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({"name": c["name"], "image": c["image"], "ready": ready, "restartCount": 0,
                "started": true, "state": {"running": {"startedAt": since}}})
        })
        .collect();
    pod["status"]["containerStatuses"] = json!(statuses);
}

/// Available: ready for at least `min_ready_seconds` (whole seconds, from
/// the Ready condition's `lastTransitionTime`), as the real controllers.
fn is_available(pod: &Value, min_ready_seconds: i64) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(super::tables::parse_rfc3339)
        .is_some_and(|since| since + min_ready_seconds <= super::tables::now_seconds())
}

/// The annotations the real controller copies from a Deployment to its
/// new ReplicaSet: all but its own bookkeeping and kubectl's last applied
/// configuration.
fn copied_annotations(d: &Value) -> Vec<(String, Value)> {
    const SKIPPED: &[&str] = &[
        "kubectl.kubernetes.io/last-applied-configuration",
        "deployment.kubernetes.io/revision",
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    ];
    d["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !SKIPPED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn min_ready_seconds(object: &Value) -> i64 {
    object["spec"]["minReadySeconds"].as_i64().unwrap_or(0)
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

/// The controller reference `owner` gives its dependents.
fn controller_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}])
}

/// An int-or-percent of `total`: a percent rounds up for surge, down for
/// unavailability (as the Deployment controller's ResolveFenceposts).
pub fn scaled_value(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            if round_up {
                (pct * total + 99) / 100
            } else {
                pct * total / 100
            }
        }
        _ => 0,
    }
}

/// (maxSurge, maxUnavailable) of a RollingUpdate Deployment, resolved
/// against its replicas; both zero becomes an unavailability of one, as
/// the real controller does for a replica count that rounds both down.
pub fn fenceposts(d: &Value) -> (i64, i64) {
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let r = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = scaled_value(&r["maxSurge"], desired, true).max(0);
    let unavailable = scaled_value(&r["maxUnavailable"], desired, false)
        .max(0)
        .min(desired);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// The active pods an owner has: terminating ones do not count, as for
/// the real ReplicaSet controller.
fn pods_owned(store: &Store, ns: &str, uid: &Value) -> Vec<(Key, Value)> {
    store
        .objects
        .iter()
        .filter(|((k, n, _), p)| {
            k.1 == "pods" && n == ns && owned_by(p, uid) && !termination::is_terminating(p)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Every pod an owner has, terminating ones too (Recreate waits for them).
fn all_pods(store: &Store, ns: &str, rs: &Value) -> i64 {
    store
        .objects
        .iter()
        .filter(|((k, n, _), p)| k.1 == "pods" && n == ns && owned_by(p, &rs["metadata"]["uid"]))
        .count() as i64
}

fn replicas_of(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn revision_of(rs: &Value) -> i64 {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn count(store: &Store, ns: &str, rs: &Value, f: impl Fn(&Value) -> bool) -> i64 {
    pods_owned(store, ns, &rs["metadata"]["uid"])
        .iter()
        .filter(|(_, p)| f(p))
        .count() as i64
}

fn set_rs_replicas(
    fake: &FakeKube,
    store: &mut Store,
    ns: &str,
    rs: &Value,
    replicas: i64,
    d: &Value,
) {
    let name = rs["metadata"]["name"].as_str().unwrap_or_default();
    let key = FakeKube::key(APPS, "replicasets", ns, name);
    let Some(latest) = store.objects.get(&key).cloned() else {
        return;
    };
    let mut next = latest.clone();
    next["spec"]["replicas"] = json!(replicas);
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let (surge, _) = fenceposts(d);
    next["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
        json!(desired.to_string());
    next["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] =
        json!((desired + surge).to_string());
    if next != latest {
        fake.commit(store, APPS, "replicasets", ns, next, Some(&latest));
    }
}

/// The Deployment controller: one ReplicaSet per pod template (named
/// `<deployment>-<pod-template-hash>`), scaled by the strategy.
fn deployment(
    fake: &FakeKube,
    store: &mut Store,
    ns: &str,
    d: &Value,
) -> Option<(String, Option<(&'static str, String)>)> {
    if d["metadata"]["deletionTimestamp"].is_string() {
        return None;
    }
    let uid = d["metadata"]["uid"].clone();
    let name = d["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let template = &d["spec"]["template"];
    let hash = template_hash(template);
    let owned: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, n, _), rs)| k.1 == "replicasets" && n == ns && owned_by(rs, &uid))
        .map(|(_, v)| v.clone())
        .collect();
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let mut new_rs = owned
        .iter()
        .find(|rs| rs["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
        .cloned();
    let mut old: Vec<Value> = owned
        .iter()
        .filter(|rs| rs["metadata"]["labels"]["pod-template-hash"] != hash.as_str())
        .cloned()
        .collect();
    old.sort_by_key(revision_of);
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let (surge, unavailable) = if recreate {
        (0, desired)
    } else {
        fenceposts(d)
    };
    let old_replicas: i64 = old.iter().map(replicas_of).sum();
    let mut progress: Option<(&'static str, String)> = None;
    match &new_rs {
        None => {
            let mut labels = template["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            labels["pod-template-hash"] = json!(hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"] = labels.clone();
            // The first ReplicaSet (or Recreate once the old pods are gone)
            // starts at full size; a rolling one within the surge.
            let start = if recreate {
                if old_replicas == 0 && old.iter().all(|rs| all_pods(store, ns, rs) == 0) {
                    desired
                } else {
                    0
                }
            } else if old.is_empty() {
                desired
            } else {
                (desired + surge - old_replicas).clamp(0, desired)
            };
            let rs_name = format!("{name}-{hash}");
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "labels": labels,
                    "annotations": {
                        "deployment.kubernetes.io/revision": (max_revision + 1).to_string(),
                        "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        "deployment.kubernetes.io/max-replicas": (desired + surge).to_string(),
                    },
                    "ownerReferences": controller_ref("apps/v1", "Deployment", d)},
                "spec": {"replicas": start, "selector": selector, "template": rs_template,
                    "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0)},
            });
            let stored = fake.commit(store, APPS, "replicasets", ns, rs, None);
            progress = Some((
                "NewReplicaSetCreated",
                format!("Created new replica set \"{rs_name}\""),
            ));
            new_rs = Some(stored);
        }
        Some(rs) if revision_of(rs) < max_revision => {
            // A rollback to an older template: it becomes the newest revision.
            let mut next = rs.clone();
            next["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                json!((max_revision + 1).to_string());
            new_rs = Some(fake.commit(store, APPS, "replicasets", ns, next, Some(rs)));
        }
        Some(_) => {}
    }
    let mut new_rs = new_rs.expect("made above");
    // The Deployment's own annotations (`kubernetes.io/change-cause` for
    // `kubectl rollout history`) go onto its current ReplicaSet.
    // So does its `minReadySeconds`.
    let copied = copied_annotations(d);
    let min_ready = json!(min_ready_seconds(d));
    if new_rs["spec"]["minReadySeconds"] != min_ready
        || copied
            .iter()
            .any(|(k, v)| new_rs["metadata"]["annotations"][k.as_str()] != *v)
    {
        let mut next = new_rs.clone();
        next["spec"]["minReadySeconds"] = min_ready;
        for (k, v) in copied {
            next["metadata"]["annotations"][k.as_str()] = v;
        }
        new_rs = fake.commit(store, APPS, "replicasets", ns, next, Some(&new_rs));
    }
    let new_name = new_rs["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let paused = d["spec"]["paused"] == true;
    if !paused {
        if recreate {
            // Recreate: every old pod goes before a new one starts.
            for rs in &old {
                if replicas_of(rs) > 0 {
                    set_rs_replicas(fake, store, ns, rs, 0, d);
                }
            }
            let old_pods: i64 = old.iter().map(|rs| all_pods(store, ns, rs)).sum();
            if old_pods == 0 && replicas_of(&new_rs) != desired {
                set_rs_replicas(fake, store, ns, &new_rs, desired, d);
            }
        } else {
            rolling_update(
                fake,
                store,
                ns,
                d,
                &new_rs,
                &old,
                desired,
                surge,
                unavailable,
            );
        }
    }
    // Old ReplicaSets beyond revisionHistoryLimit, scaled to zero, go.
    let limit = d["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let idle: Vec<Value> = old
        .iter()
        .filter_map(|rs| {
            let key = FakeKube::key(APPS, "replicasets", ns, rs["metadata"]["name"].as_str()?);
            store.objects.get(&key).cloned()
        })
        .filter(|rs| replicas_of(rs) == 0 && count(store, ns, rs, |_| true) == 0)
        .collect();
    if idle.len() > limit {
        for rs in idle.iter().take(idle.len() - limit) {
            let key = FakeKube::key(
                APPS,
                "replicasets",
                ns,
                rs["metadata"]["name"].as_str().unwrap_or_default(),
            );
            fake.delete_key(store, &key);
        }
    }
    Some((new_name, progress))
}

/// RollingUpdate: the new ReplicaSet grows while every ReplicaSet's
/// replicas stay within replicas + maxSurge; old ones shrink while the
/// available pods stay at least replicas - maxUnavailable. One of the two
/// per pass, as the real controller, so pods never outrun the bounds.
#[allow(clippy::too_many_arguments)]
fn rolling_update(
    fake: &FakeKube,
    store: &mut Store,
    ns: &str,
    d: &Value,
    new_rs: &Value,
    old: &[Value],
    desired: i64,
    surge: i64,
    unavailable: i64,
) {
    let new_replicas = replicas_of(new_rs);
    let old_replicas: i64 = old.iter().map(replicas_of).sum();
    let total = new_replicas + old_replicas;
    let max_total = desired + surge;
    // Scale up the new ReplicaSet.
    if new_replicas < desired && total < max_total {
        let want = (new_replicas + (max_total - total)).min(desired);
        set_rs_replicas(fake, store, ns, new_rs, want, d);
        return;
    }
    if new_replicas > desired && old_replicas == 0 {
        set_rs_replicas(fake, store, ns, new_rs, desired, d);
        return;
    }
    // Scale down old ReplicaSets: first their pods that are not
    // available (they count for nothing), then within the availability bound.
    let min_available = desired - unavailable;
    let all_pods: i64 = std::iter::once(new_rs)
        .chain(old)
        .map(|rs| {
            count(store, ns, rs, |p| {
                p["metadata"]["deletionTimestamp"].is_null()
            })
        })
        .sum();
    let min_ready = min_ready_seconds(d);
    let available_pod = |p: &Value| is_available(p, min_ready);
    let new_unavailable = new_replicas - count(store, ns, new_rs, available_pod);
    let mut cleanup = (all_pods - min_available - new_unavailable).max(0);
    let mut changed = Vec::new();
    for rs in old {
        if cleanup == 0 {
            break;
        }
        let not_ready = replicas_of(rs) - count(store, ns, rs, available_pod);
        let cut = not_ready.min(cleanup).max(0);
        if cut > 0 {
            cleanup -= cut;
            changed.push((rs["metadata"]["name"].clone(), replicas_of(rs) - cut));
        }
    }
    let current = |rs: &Value, changed: &[(Value, i64)]| {
        changed
            .iter()
            .find(|(n, _)| *n == rs["metadata"]["name"])
            .map(|(_, r)| *r)
            .unwrap_or_else(|| replicas_of(rs))
    };
    let available: i64 = std::iter::once(new_rs)
        .chain(old)
        .map(|rs| count(store, ns, rs, available_pod).min(current(rs, &changed)))
        .sum();
    let mut down = (available - min_available).max(0);
    for rs in old {
        if down == 0 {
            break;
        }
        let now = current(rs, &changed);
        let cut = now.min(down);
        if cut > 0 {
            down -= cut;
            changed.retain(|(n, _)| *n != rs["metadata"]["name"]);
            changed.push((rs["metadata"]["name"].clone(), now - cut));
        }
    }
    for (rs_name, replicas) in changed {
        if let Some(rs) = old.iter().find(|rs| rs["metadata"]["name"] == rs_name) {
            set_rs_replicas(fake, store, ns, rs, replicas, d);
        }
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, old: &Value) -> Value {
    let now = super::now_rfc3339();
    let previous = old
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind);
    let transition = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let update = match previous {
        Some(p) if p["status"] == status && p["reason"] == reason && p["message"] == message => {
            p["lastUpdateTime"].clone()
        }
        _ => json!(now),
    };
    json!({"type": kind, "status": status, "lastUpdateTime": update, "lastTransitionTime": transition,
        "reason": reason, "message": message})
}

/// The Deployment's status, from its ReplicaSets and their pods, as
/// calculateStatus and the progress conditions report it.
fn deployment_status(
    fake: &FakeKube,
    store: &mut Store,
    ns: &str,
    d: &Value,
    new_name: &str,
    progress: Option<(&'static str, String)>,
) {
    let name = d["metadata"]["name"].as_str().unwrap_or_default();
    let key = FakeKube::key(APPS, "deployments", ns, name);
    let Some(latest) = store.objects.get(&key).cloned() else {
        return;
    };
    let uid = &d["metadata"]["uid"];
    let sets: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, n, _), rs)| k.1 == "replicasets" && n == ns && owned_by(rs, uid))
        .map(|(_, v)| v.clone())
        .collect();
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let (mut pods, mut updated, mut ready, mut spec_total) = (0, 0, 0, 0);
    let mut available = 0;
    let min_ready = min_ready_seconds(d);
    let mut failure = None;
    for rs in &sets {
        let all = count(store, ns, rs, |_| true);
        pods += all;
        ready += count(store, ns, rs, is_ready);
        available += count(store, ns, rs, |p| is_available(p, min_ready));
        spec_total += replicas_of(rs);
        if rs["metadata"]["name"] == new_name {
            updated = all;
        }
        if let Some(c) = rs["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "ReplicaFailure" && c["status"] == "True")
        {
            failure = Some(c["message"].as_str().unwrap_or_default().to_string());
        }
    }
    let old_conditions = &latest["status"]["conditions"];
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let unavailable_allowed = if recreate { desired } else { fenceposts(d).1 };
    let mut conditions = Vec::new();
    conditions.push(if available >= desired - unavailable_allowed {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            old_conditions,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            old_conditions,
        )
    });
    let complete = updated == desired && pods == desired && available == desired;
    let (reason, message) = if complete {
        (
            "NewReplicaSetAvailable".to_string(),
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if let Some((r, m)) = progress {
        (r.to_string(), m)
    } else {
        let previous = old_conditions
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetCreated");
        match previous {
            Some(p)
                if p["message"].as_str().is_some_and(|m| m.contains(new_name)) && updated == 0 =>
            {
                (
                    "NewReplicaSetCreated".to_string(),
                    p["message"].as_str().unwrap_or_default().to_string(),
                )
            }
            _ => (
                "ReplicaSetUpdated".to_string(),
                format!("ReplicaSet \"{new_name}\" is progressing."),
            ),
        }
    };
    conditions.push(condition(
        "Progressing",
        "True",
        &reason,
        &message,
        old_conditions,
    ));
    if let Some(message) = failure {
        conditions.push(condition(
            "ReplicaFailure",
            "True",
            "FailedCreate",
            &message,
            old_conditions,
        ));
    }
    let status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": pods,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (spec_total - available).max(0),
        "conditions": conditions,
    });
    if latest["status"] != status {
        let mut next = latest.clone();
        next["status"] = status;
        fake.commit(store, APPS, "deployments", ns, next, Some(&latest));
    }
}

/// The ReplicaSet controller: pods of its template up to its replicas
/// (named `<replicaset>-<5 characters>`), the surplus deleted not-ready
/// first; its status counts them.
fn replica_set(fake: &FakeKube, store: &mut Store, ns: &str, rs: &Value, create: bool) {
    if rs["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    let name = rs["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let uid = rs["metadata"]["uid"].clone();
    let want = replicas_of(rs).max(0) as usize;
    let mut pods = pods_owned(store, ns, &uid);
    let mut failure = None;
    if pods.len() > want && !create {
        // Not ready first, then the youngest.
        pods.sort_by_key(|(_, p)| {
            (
                is_ready(p),
                std::cmp::Reverse(
                    p["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
            )
        });
        for (key, _) in pods.iter().take(pods.len() - want) {
            // With the pod's own grace period, as the real controller.
            fake.delete_key(store, key);
        }
    } else if pods.len() < want && create {
        let template = &rs["spec"]["template"];
        for _ in 0..(want - pods.len()) {
            let pod_name = loop {
                let suffix: String = {
                    let seed = format!("{name}{}{}", store.rv, store.next_ip);
                    let digest = Sha256::digest(seed.as_bytes());
                    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                    digest
                        .iter()
                        .take(5)
                        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                        .collect()
                };
                let candidate = format!("{name}-{suffix}");
                if !store
                    .objects
                    .contains_key(&FakeKube::key(CORE, "pods", ns, &candidate))
                {
                    break candidate;
                }
                store.next_ip += 1;
            };
            store.next_ip += 1;
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "generateName": format!("{name}-"), "labels": template["metadata"]["labels"],
                    "annotations": template["metadata"]["annotations"],
                    "ownerReferences": controller_ref("apps/v1", "ReplicaSet", rs)},
                "spec": template["spec"],
                "status": {"podIP": format!("10.244.{}.{}", store.next_ip / 250, store.next_ip % 250 + 1)},
            });
            pod["spec"]["nodeName"] = json!(termination::NODE);
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
    }
    let now = pods_owned(store, ns, &uid);
    let ready = now.iter().filter(|(_, p)| is_ready(p)).count();
    let available = now
        .iter()
        .filter(|(_, p)| is_available(p, min_ready_seconds(rs)))
        .count();
    let key = FakeKube::key(APPS, "replicasets", ns, &name);
    let Some(latest) = store.objects.get(&key).cloned() else {
        return;
    };
    let mut status = json!({
        "replicas": now.len(),
        "fullyLabeledReplicas": now.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": latest["metadata"]["generation"],
    });
    if let Some(message) = failure.or_else(|| {
        // A failure stays reported until the pods are all there.
        (now.len() < want).then(|| {
            latest["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "ReplicaFailure")
                .and_then(|c| c["message"].as_str())
                .map(str::to_string)
        })?
    }) {
        status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}]);
    }
    if latest["status"] != status {
        let mut next = latest.clone();
        next["status"] = status;
        fake.commit(store, APPS, "replicasets", ns, next, Some(&latest));
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

/// The ReplicaSets a Deployment owns, and which is its current template's.
fn replica_sets_of(store: &Store, ns: &str, d: &Value) -> Vec<(bool, Value)> {
    let hash = template_hash(&d["spec"]["template"]);
    store
        .objects
        .iter()
        .filter(|((k, n, _), rs)| {
            k.1 == "replicasets" && n == ns && owned_by(rs, &d["metadata"]["uid"])
        })
        .map(|(_, rs)| {
            (
                rs["metadata"]["labels"]["pod-template-hash"] == hash.as_str(),
                rs.clone(),
            )
        })
        .collect()
}

/// Marks every pod of a Deployment's current template ready now (the
/// kubelet), again as the rollout makes more, until it has rolled out.
pub fn make_ready(fake: &FakeKube, ns: &str, name: &str) -> Option<Value> {
    for _ in 0..200 {
        reconcile(fake);
        let done = {
            let mut store = fake.inner.store.lock().expect("store");
            let d = store
                .objects
                .get(&FakeKube::key(APPS, "deployments", ns, name))?
                .clone();
            let mut pods = Vec::new();
            for (_, rs) in replica_sets_of(&store, ns, &d)
                .into_iter()
                .filter(|(current, _)| *current)
            {
                pods.extend(pods_owned(&store, ns, &rs["metadata"]["uid"]));
            }
            let waiting: Vec<(Key, Value)> =
                pods.into_iter().filter(|(_, p)| !is_ready(p)).collect();
            for (key, mut pod) in waiting.clone() {
                let old = pod.clone();
                set_ready(&mut pod, true);
                fake.commit(&mut store, CORE, "pods", &key.1, pod, Some(&old));
            }
            let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
            let s = &d["status"];
            waiting.is_empty()
                && s["observedGeneration"] == d["metadata"]["generation"]
                && s["updatedReplicas"] == desired
                && s["replicas"] == desired
                && s["availableReplicas"] == desired
        };
        if done {
            break;
        }
    }
    reconcile(fake);
    fake.get(APPS, "deployments", ns, name)
}

/// Pods by name of a Deployment, through its ReplicaSets (tests inspect them).
pub fn pods_of(fake: &FakeKube, ns: &str, deployment: &str) -> BTreeMap<String, Value> {
    let Some(d) = fake.get(APPS, "deployments", ns, deployment) else {
        return BTreeMap::new();
    };
    let store = fake.inner.store.lock().expect("store");
    replica_sets_of(&store, ns, &d)
        .into_iter()
        .flat_map(|(_, rs)| pods_owned(&store, ns, &rs["metadata"]["uid"]))
        .map(|(_, p)| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p,
            )
        })
        .collect()
}
