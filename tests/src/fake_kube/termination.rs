//! Graceful Pod deletion, as the API server and the kubelet do it.
//!
//! - Deleting a Pod that runs on a node (the fake's ReplicaSet pods run on
//!   `fake-node`) with a grace period greater than zero does not remove it:
//!   the API server sets `metadata.deletionTimestamp` to now plus the
//!   period and `metadata.deletionGracePeriodSeconds` to the period, and
//!   answers 200 with the pod. The period is the request's
//!   `gracePeriodSeconds` (`kubectl delete --grace-period=N`; `--now` is 1),
//!   else the pod's `spec.terminationGracePeriodSeconds` (defaulted to 30).
//!   A second delete may shorten the period, never lengthen it.
//! - A period of zero (`--force --grace-period=0`), a pod never scheduled
//!   (no `spec.nodeName`) and a pod that has finished (`Succeeded`,
//!   `Failed`) are removed at once (finalizers still hold them).
//! - The fake's kubelet removes a terminating pod once its
//!   `deletionTimestamp` has passed (1 s granularity, as the timestamp), or
//!   earlier when [`super::Options::termination_cap`] says so or a test
//!   calls [`super::FakeKube::finish_terminating`].
//! - Meanwhile the pod keeps its readiness; its EndpointSlice endpoint is
//!   `ready: false, serving: <readiness>, terminating: true`, so a Service's
//!   ready endpoints leave it out; ReplicaSets do not count it (their
//!   `status.replicas` and the pods they keep exclude terminating pods, and
//!   a replacement is created at once), Recreate waits until it is gone.
//! - Controllers (a ReplicaSet scaling down, the garbage collector) delete
//!   pods with the pod's own period, as theirs do.

use serde_json::{Value, json};

use super::{FakeKube, Key, Store, tables};

/// The node the fake schedules every ReplicaSet's pods onto.
pub const NODE: &str = "fake-node";

/// Seconds since the Unix epoch as an RFC 3339 time (civil from days,
/// Howard Hinnant's algorithm).
fn rfc3339_at(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rem = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The grace period a delete of `pod` gets, from the request's
/// `gracePeriodSeconds` (if any) and the pod.
pub fn grace_period(pod: &Value, asked: Option<i64>) -> i64 {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        || phase == "Succeeded"
        || phase == "Failed"
    {
        return 0;
    }
    asked
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

/// Starts (or shortens) a pod's graceful termination. `None` when the pod
/// is to be removed now (a period of zero).
pub(super) fn begin(
    fake: &FakeKube,
    store: &mut Store,
    key: &Key,
    asked: Option<i64>,
) -> Option<Value> {
    let pod = store.objects.get(key)?.clone();
    let grace = grace_period(&pod, asked);
    if grace == 0 {
        return None;
    }
    let current = pod["metadata"]["deletionGracePeriodSeconds"].as_i64();
    if pod["metadata"]["deletionTimestamp"].is_string() && current.is_some_and(|c| c <= grace) {
        return Some(pod);
    }
    let mut held = pod;
    held["metadata"]["deletionTimestamp"] = json!(rfc3339_at(tables::now_seconds() + grace));
    held["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    store.rv += 1;
    held["metadata"]["resourceVersion"] = json!(store.rv.to_string());
    store.objects.insert(key.clone(), held.clone());
    fake.emit(store, key.0.clone(), &key.1, "MODIFIED", held.clone(), None);
    fake.inner.changed.notify_one();
    Some(held)
}

/// When the kubelet ends `pod`'s termination: its deadline, or the
/// options' cap after it began.
fn due(fake: &FakeKube, pod: &Value, now: i64) -> bool {
    let Some(deadline) = pod["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(tables::parse_rfc3339)
    else {
        return false;
    };
    let Some(grace) = pod["metadata"]["deletionGracePeriodSeconds"].as_i64() else {
        // Held by finalizers, not terminating gracefully.
        return false;
    };
    if grace == 0 {
        return false;
    }
    if now >= deadline {
        return true;
    }
    fake.inner
        .options
        .termination_cap
        .is_some_and(|cap| now >= deadline - grace + cap.as_secs() as i64)
}

/// The kubelet's part: pods whose termination is over are removed (a
/// delete with a period of zero: finalizers still hold them).
pub(super) fn kubelet(fake: &FakeKube, store: &mut Store) {
    let now = tables::now_seconds();
    let over: Vec<Key> = store
        .objects
        .iter()
        .filter(|((k, _, _), p)| k.0 == "api/v1" && k.1 == "pods" && due(fake, p, now))
        .map(|(k, _)| k.clone())
        .collect();
    for key in over {
        end(fake, store, &key);
    }
}

/// Ends one pod's termination now.
pub(super) fn end(fake: &FakeKube, store: &mut Store, key: &Key) -> Option<Value> {
    let mut pod = store.objects.get(key)?.clone();
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    if pod["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        store.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        store.objects.insert(key.clone(), pod.clone());
        fake.emit(store, key.0.clone(), &key.1, "MODIFIED", pod.clone(), None);
        return Some(pod);
    }
    fake.remove(store, key);
    Some(pod)
}

/// Whether a pod is terminating (deleted, not yet gone).
pub fn is_terminating(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_string()
}
